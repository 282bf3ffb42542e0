"""Inspecting and verifying the development certificates.

:func:`certificate_info` reads one certificate (the original's
``getCertificateInfo()``); :func:`verify_certificate` and :func:`verify_all`
check certificates in a directory against its root CA. Everything here is
re-exported by :mod:`exprsn_ipc.certs.authority`. See docs/certificates.md.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from exprsn_ipc.certs.files import (
    CA_NAME,
    CERT_SUFFIX,
    KEY_SUFFIX,
    LOCALHOST_NAME,
    RENEW_BEFORE_DAYS,
    chains_to,
    dns_sans,
    is_ca_cert,
    key_matches,
    load_cert,
    load_key,
    stem_for,
    utc_now,
)
from exprsn_ipc.errors import CertificateError

__all__ = ["CertificateInfo", "VerificationResult", "certificate_info", "verify_all", "verify_certificate"]

#: (attribute OID, key in :attr:`CertificateInfo.subject`, key in the original's JSON).
_NAME_FIELDS: Final = (
    (NameOID.COMMON_NAME, "commonName", "commonName"),
    (NameOID.COUNTRY_NAME, "countryName", "countryName"),
    (NameOID.STATE_OR_PROVINCE_NAME, "stateOrProvinceName", "ST"),
    (NameOID.LOCALITY_NAME, "localityName", "localityName"),
    (NameOID.ORGANIZATION_NAME, "organizationName", "organizationName"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "organizationalUnitName", "OU"),
)


# --------------------------------------------------------------------------- #
# Result types
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What :func:`certificate_info` reads from a certificate file.

    ``subject``/``issuer`` only hold the attributes present, keyed
    ``commonName``, ``countryName``, ``stateOrProvinceName``, ``localityName``,
    ``organizationName``, ``organizationalUnitName``. ``serial_number`` is
    lowercase hex (even length), like node-forge's ``serialNumber``.
    ``days_left`` is whole days until ``valid_to`` (negative once expired),
    computed when the info was read.
    """

    path: Path
    subject: dict[str, str]
    issuer: dict[str, str]
    valid_from: _dt.datetime
    valid_to: _dt.datetime
    serial_number: str
    sans: list[str]
    days_left: int
    fingerprint_sha256: str
    is_ca: bool

    def to_dict(self) -> dict[str, Any]:
        """The original ``getCertificateInfo()`` JSON shape.

        ``{subject: {commonName, countryName, ST, localityName,
        organizationName, OU}, issuer: {...}, validFrom, validTo,
        serialNumber}`` with JavaScript ``Date#toISOString()`` timestamps.
        Attributes the certificate lacks are omitted, as ``JSON.stringify``
        omits ``undefined``.
        """
        return {
            "subject": _js_names(self.subject),
            "issuer": _js_names(self.issuer),
            "validFrom": _js_iso(self.valid_from),
            "validTo": _js_iso(self.valid_to),
            "serialNumber": self.serial_number,
        }


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """Outcome of :func:`verify_certificate`.

    ``ok`` is true when ``problems`` is empty. ``warning`` is set (and ``ok``
    may still be true) when fewer than :data:`RENEW_BEFORE_DAYS` days are left.
    ``days_left`` is ``None`` when the certificate could not be read.
    """

    name: str
    cert_path: Path
    key_path: Path
    ok: bool
    problems: tuple[str, ...] = ()
    days_left: int | None = None
    warning: str | None = None
    not_after: _dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (paths as strings, ``notAfter`` as ISO 8601)."""
        return {
            "name": self.name,
            "certPath": str(self.cert_path),
            "keyPath": str(self.key_path),
            "ok": self.ok,
            "problems": list(self.problems),
            "daysLeft": self.days_left,
            "warning": self.warning,
            "notAfter": None if self.not_after is None else _js_iso(self.not_after),
        }


# --------------------------------------------------------------------------- #
# Inspection
# --------------------------------------------------------------------------- #


def _name_dict(name: x509.Name) -> dict[str, str]:
    out: dict[str, str] = {}
    for oid, key, _ in _NAME_FIELDS:
        attrs = name.get_attributes_for_oid(oid)
        if attrs:
            value = attrs[0].value
            out[key] = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return out


def _js_names(names: dict[str, str]) -> dict[str, str]:
    return {js: names[key] for _, key, js in _NAME_FIELDS if key in names}


def _js_iso(moment: _dt.datetime) -> str:
    """JavaScript ``Date#toISOString()``: millisecond precision, ``Z`` suffix."""
    utc = moment.astimezone(_dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _serial_hex(serial: int) -> str:
    text = f"{serial:x}"
    return text if len(text) % 2 == 0 else "0" + text


def _days_left(not_after: _dt.datetime, now: _dt.datetime) -> int:
    return (not_after - now) // _dt.timedelta(days=1)


def _all_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    for general in ext:
        value = general.value
        out.append(value if isinstance(value, str) else str(value))
    return out


def certificate_info(cert_path: Path | str) -> CertificateInfo:
    """Read a PEM certificate; raises :class:`CertificateError` if it cannot."""
    path = Path(cert_path)
    cert = load_cert(path)
    return _info(path, cert, utc_now())


def _info(path: Path, cert: x509.Certificate, now: _dt.datetime) -> CertificateInfo:
    return CertificateInfo(
        path=path,
        subject=_name_dict(cert.subject),
        issuer=_name_dict(cert.issuer),
        valid_from=cert.not_valid_before_utc,
        valid_to=cert.not_valid_after_utc,
        serial_number=_serial_hex(cert.serial_number),
        sans=_all_sans(cert),
        days_left=_days_left(cert.not_valid_after_utc, now),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        is_ca=is_ca_cert(cert),
    )


# --------------------------------------------------------------------------- #
# Verification
# --------------------------------------------------------------------------- #


def _verify_stem(directory: Path, stem: str, at: _dt.datetime | None) -> VerificationResult:
    cert_path = directory / f"{stem}{CERT_SUFFIX}"
    key_path = directory / f"{stem}{KEY_SUFFIX}"
    now = utc_now() if at is None else at.astimezone(_dt.UTC)
    problems: list[str] = []

    try:
        cert = load_cert(cert_path)
    except CertificateError as exc:
        return VerificationResult(stem, cert_path, key_path, False, (str(exc),))

    try:
        key = load_key(key_path)
    except CertificateError as exc:
        problems.append(str(exc))
    else:
        if not key_matches(cert, key):
            problems.append(f"{key_path.name} does not match {cert_path.name}")

    if stem == CA_NAME:
        if not is_ca_cert(cert):
            problems.append("not a CA certificate (basicConstraints CA=false or missing)")
        reason = chains_to(cert, cert)
        if reason is not None:
            problems.append(f"not a valid self-signed root: {reason}")
    else:
        try:
            ca_cert = load_cert(directory / f"{CA_NAME}{CERT_SUFFIX}")
        except CertificateError as exc:
            problems.append(f"cannot check the chain: {exc}")
        else:
            reason = chains_to(cert, ca_cert)
            if reason is not None:
                problems.append(f"does not chain to {CA_NAME}{CERT_SUFFIX}: {reason}")
        if is_ca_cert(cert):
            problems.append("leaf certificate is marked as a CA")
        common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = common[0].value if common else None
        if cn != stem:
            problems.append(f"common name is {cn!r}, expected {stem!r}")
        if stem not in dns_sans(cert):
            problems.append(f"subjectAltName does not include DNS:{stem}")

    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    days_left = _days_left(not_after, now)
    warning: str | None = None
    if now < not_before:
        problems.append(f"not valid before {not_before.isoformat()}")
    if now >= not_after:
        problems.append(f"expired on {not_after.isoformat()}")
    elif not_after - now < _dt.timedelta(days=RENEW_BEFORE_DAYS):
        warning = (
            f"expires in {days_left} day{'s' if days_left != 1 else ''} "
            f"({not_after.date().isoformat()}); regenerate it soon"
        )
    return VerificationResult(stem, cert_path, key_path, not problems, tuple(problems), days_left, warning, not_after)


def verify_certificate(certs_dir: Path | str, service: str, *, at: _dt.datetime | None = None) -> VerificationResult:
    """Check one certificate in ``certs_dir``; never raises for a bad certificate.

    ``service`` is ``"ca"``, ``"localhost"`` or a service name (``timeline`` /
    ``exprsn-timeline``). Checks: the cert exists and parses, the key exists
    and matches, the cert is directly issued by ``ca-cert.pem`` (issuer name
    and signature; for the CA itself: self-signed and CA=true), it is within
    its validity period at ``at`` (default: now), and for leaves the CN and a
    DNS SAN name the service. Fewer than :data:`RENEW_BEFORE_DAYS` days left
    gives a ``warning``. Only an invalid service name raises
    (:class:`CertificateError`).
    """
    return _verify_stem(Path(certs_dir), stem_for(service), at)


def verify_all(certs_dir: Path | str, *, at: _dt.datetime | None = None) -> list[VerificationResult]:
    """Verify every ``*-cert.pem`` in ``certs_dir``: CA first, then localhost, then by name.

    Raises :class:`CertificateError` if the directory does not exist.
    """
    directory = Path(certs_dir)
    if not directory.is_dir():
        raise CertificateError(f"certificates directory not found: {directory}")
    stems = {
        p.name[: -len(CERT_SUFFIX)]
        for p in directory.glob(f"*{CERT_SUFFIX}")
        if p.is_file() and len(p.name) > len(CERT_SUFFIX) and not p.name.startswith(".")
    }
    order = {CA_NAME: 0, LOCALHOST_NAME: 1}
    ranked = sorted(stems, key=lambda s: (order.get(s, 2), s))
    return [_verify_stem(directory, stem, at) for stem in ranked]
