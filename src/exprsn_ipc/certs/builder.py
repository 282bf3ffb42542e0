"""Building X.509 certificates: the local root CA and service leaves, as the original shaped them.

Pure construction, nothing written: :mod:`exprsn_ipc.certs.authority` decides what to
create, keep or renew, and writes the files.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from typing import Final, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exprsn_ipc.certs.files import LOCALHOST_NAME

__all__ = ["BACKDATE", "build_ca", "build_leaf", "leaf_key_usage", "new_key"]

#: ``not_valid_before`` is set this far in the past to tolerate clock skew.
BACKDATE: Final = _dt.timedelta(minutes=5)

#: The subject attributes every certificate shares with the CA (the original's).
_COUNTRY: Final = "US"
_STATE: Final = "California"
_LOCALITY: Final = "San Francisco"
_ORGANIZATION: Final = "Exprsn IO"
_CA_COMMON_NAME: Final = "Exprsn Root CA"
_CA_UNIT: Final = "Certificate Authority"
#: The original gave the shared certificate ``OU=shared``; kept for continuity.
_LOCALHOST_UNIT: Final = "shared"

#: SANs every leaf carries (the original's four), in this order.
_COMMON_DNS: Final = ("localhost", "*.localhost")
_COMMON_IPS: Final = ("127.0.0.1", "::1")


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.COUNTRY_NAME, _COUNTRY),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, _STATE),
            x509.NameAttribute(NameOID.LOCALITY_NAME, _LOCALITY),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
        ]
    )


def new_key(key_size: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def _signing_hash(key: object) -> hashes.SHA256 | None:
    """SHA-256 for RSA/EC/DSA keys; ``None`` for keys that hash internally (Ed25519...)."""
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey):
        return hashes.SHA256()
    return None


def leaf_key_usage(*, key_encipherment: bool) -> x509.KeyUsage:
    """A leaf's key usage: digital signatures, and key encipherment for TLS with RSA keys."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def build_ca(key: rsa.RSAPrivateKey, days: int, now: _dt.datetime) -> x509.Certificate:
    name = _name(_CA_COMMON_NAME, _CA_UNIT)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def build_leaf(
    name: str,
    key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    days: int,
    now: _dt.datetime,
) -> x509.Certificate:
    unit = _LOCALHOST_UNIT if name == LOCALHOST_NAME else name
    dns = list(dict.fromkeys((*_COMMON_DNS, name)))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns[: len(_COMMON_DNS)]]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _COMMON_IPS]
    sans += [x509.DNSName(d) for d in dns[len(_COMMON_DNS) :]]
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        issuer_public = cast(CertificateIssuerPublicKeyTypes, ca_cert.public_key())
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public)
    # A leaf must not outlive its issuer.
    not_after = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name, unit))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leaf_key_usage(key_encipherment=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(ca_key, _signing_hash(ca_key))
