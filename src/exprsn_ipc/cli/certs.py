"""``exprsn-ipc certs``: the guide's ``node scripts/generate-tls-certs.js`` and more."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exprsn_ipc.cli._common import console, fail, load_settings
from exprsn_ipc.errors import CertificateError

certs_app = typer.Typer(help="Root CA and per-service TLS certificates.", no_args_is_help=True, rich_markup_mode=None)


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
    certs_dir: Annotated[
        Path | None, typer.Option("--dir", metavar="DIR", help="Certificates folder [default: CERTS_DIR].")
    ] = None,
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
    certs_dir: Annotated[
        Path | None, typer.Option("--dir", metavar="DIR", help="Certificates folder [default: CERTS_DIR].")
    ] = None,
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
