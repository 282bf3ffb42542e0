"""``exprsn-ipc certs``: the guide's ``node scripts/generate-tls-certs.js`` and more."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exprsn_ipc.cli._common import console, fail, load_settings
from exprsn_ipc.errors import CertificateError

certs_app = typer.Typer(help="Root CA and per-service TLS certificates.", no_args_is_help=True, rich_markup_mode=None)


#: ``--dir`` of the commands that read or extend an existing certificates folder.
CertsDir = Annotated[
    Path | None, typer.Option("--dir", metavar="DIR", help="Certificates folder [default: CERTS_DIR].")
]


def _dir(value: Path | None) -> Path:
    return value if value is not None else load_settings(read_only=True).certs_dir


@certs_app.command("generate")
def generate(
    services: Annotated[
        list[str] | None,
        typer.Option("--services", metavar="NAME", help="Also issue a certificate for this service (repeatable)."),
    ] = None,
    certs_dir: Annotated[
        Path | None, typer.Option("--dir", metavar="DIR", help="Output folder [default: CERTS_DIR].")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Regenerate the CA and every certificate.")] = False,
    ca_days: Annotated[int, typer.Option("--ca-days", metavar="DAYS", help="Validity of a new root CA.")] = 3650,
    leaf_days: Annotated[
        int, typer.Option("--leaf-days", metavar="DAYS", help="Validity of each new service certificate.")
    ] = 730,
) -> None:
    """Create the root CA (kept if present), the localhost fallback and one certificate per service."""
    from exprsn_ipc.certs.authority import format_report, generate_certificates

    try:
        report = generate_certificates(
            _dir(certs_dir), extra_services=services or (), force=force, ca_days=ca_days, leaf_days=leaf_days
        )
    except CertificateError as exc:
        console.print("❌ Error generating certificates:")
        fail(str(exc), 1)
    for line in format_report(report):
        console.print(line, highlight=False)


@certs_app.command("show")
def show(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="Service name, 'localhost' or 'ca'.")],
    certs_dir: CertsDir = None,
) -> None:
    """Show one certificate and check its chain and expiry."""
    from exprsn_ipc.certs.authority import cert_paths, certificate_info, verify_certificate

    folder = _dir(certs_dir)
    cert, _ = cert_paths(folder, service)
    if not cert.is_file():
        fail(f"{cert} does not exist: run `exprsn-ipc certs generate`", 1)
    info = certificate_info(cert)
    console.print(f"[bold]{cert}[/]")
    console.print(f"  subject: {info.subject}")
    console.print(f"  issuer:  {info.issuer}")
    console.print(f"  valid:   {info.valid_from:%Y-%m-%d} → {info.valid_to:%Y-%m-%d} ({info.days_left} days left)")
    console.print(f"  serial:  {info.serial_number}")
    console.print(f"  SANs:    {', '.join(info.sans)}")
    result = verify_certificate(folder, service)
    _print_result(result.name, result.ok, result.problems, result.warning)
    if not result.ok:
        raise typer.Exit(1)


@certs_app.command("verify")
def verify(
    certs_dir: CertsDir = None,
) -> None:
    """Check every certificate's chain, key and expiry (warns under 30 days)."""
    from exprsn_ipc.certs.authority import verify_all

    folder = _dir(certs_dir)
    try:
        results = verify_all(folder)
    except CertificateError as exc:
        fail(f"{exc}: run `exprsn-ipc certs generate` (or point --dir/CERTS_DIR at them)", 1)
    if not results:
        fail(f"no certificates in {folder}: run `exprsn-ipc certs generate`", 1)
    for result in results:
        _print_result(result.name, result.ok, result.problems, result.warning)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _print_result(name: str, ok: bool, problems: tuple[str, ...], warning: str | None) -> None:
    mark = "[green]✓[/]" if ok else "[red]✗[/]"
    console.print(f"{mark} {name}" + (f"  [yellow]⚠ {warning}[/]" if warning else ""))
    for problem in problems:
        console.print(f"    [red]{problem}[/]")


# Service credentials (docs/security.md) ---------------------------------------------


@certs_app.command("issue")
def issue(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service the credential speaks for.")],
    certs_dir: CertsDir = None,
    days: Annotated[int, typer.Option("--days", metavar="DAYS", help="Validity of the credential.")] = 90,
    replace: Annotated[
        bool, typer.Option("--replace", help="Revoke the service's current credential and issue a new one.")
    ] = False,
) -> None:
    """Issue a service its own credential (an Ed25519 key certified by the root CA).

    From then on the Bridge admits the service only with it: the shared key can no
    longer speak for it.
    """
    from exprsn_ipc.certs.credentials import credential_paths, issue_credential

    folder = _dir(certs_dir)
    try:
        record = issue_credential(folder, service, days=days, replace=replace)
    except CertificateError as exc:
        fail(str(exc), 1)
    key = credential_paths(folder, record.service)[1]
    console.print(f"✓ issued {record.service} credential {record.serial_hex}, valid until {record.not_after:%Y-%m-%d}")
    console.print(f"  key (private, for {record.service}'s hosts only): {key}", highlight=False)
    console.print(f"  certificate (public): {record.cert_path}", highlight=False)


@certs_app.command("list")
def list_(
    certs_dir: CertsDir = None,
) -> None:
    """List the service credentials: service, serial, expiry and status."""
    from exprsn_ipc.certs.credentials import list_credentials

    folder = _dir(certs_dir)
    try:
        records = list_credentials(folder)
    except CertificateError as exc:
        fail(str(exc), 1)
    if not records:
        console.print(f"no service credentials in {folder}: issue one with `exprsn-ipc certs issue SERVICE`")
        return
    for record in records:
        mark = "[green]✓[/]" if record.status == "valid" else "[red]✗[/]"
        console.print(
            f"{mark} {record.service:<24} {record.serial_hex:<42} until {record.not_after:%Y-%m-%d}  {record.status}",
            highlight=False,
        )


@certs_app.command("revoke")
def revoke(
    credential: Annotated[
        str, typer.Argument(metavar="SERVICE|SERIAL", help="The service, or the credential's serial (hex).")
    ],
    certs_dir: CertsDir = None,
) -> None:
    """Revoke a service credential: Bridges close its live connections and refuse new ones."""
    from exprsn_ipc.certs.credentials import revoke_credential

    try:
        record = revoke_credential(_dir(certs_dir), credential)
    except CertificateError as exc:
        fail(str(exc), 1)
    console.print(
        f"✓ revoked {record.service} credential {record.serial_hex}: running Bridges close its connections "
        "within IPC_CREDENTIAL_RECHECK seconds"
    )
