"""``exprsn-ipc policy``: validate and explain an access policy, and ask it about one action."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from exprsn_ipc.cli._common import console, fail
from exprsn_ipc.errors import ConfigError
from exprsn_ipc.protocol.events import CRUD_OPERATIONS, BusEvent, crud_operation
from exprsn_ipc.protocol.policy import KINDS, Action, Policy, load_policy
from exprsn_ipc.settings import Settings

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="The access policy (IPC_POLICY): check a file, test an action.", no_args_is_help=True, rich_markup_mode=None
)


def _load(path: Path | None) -> Policy:
    # Only IPC_POLICY is needed: no broker key is resolved (checking a policy needs none).
    chosen = path if path is not None else _configured_policy()
    if chosen is None:
        fail("no policy file: give one (--policy FILE) or set IPC_POLICY", 2)
    try:
        return load_policy(chosen)
    except ConfigError as exc:
        fail(f"❌ {exc}", 1)


def _configured_policy() -> Path | None:
    try:
        return Settings().ipc_policy
    except ValidationError as exc:
        fail(f"invalid configuration: {exc.errors()[0]['msg']}", 2)


@policy_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The policy file (TOML).")],
) -> None:
    """Validate a policy file and explain its rules in order (exit 1 when it is not valid)."""
    policy = _load(file)
    console.print(f"✓ {file} is a valid policy", highlight=False)
    for line in policy.explain():
        console.print(line, highlight=False, markup=False)


@policy_app.command("test")
def test(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="The service acting (exprsn-timeline or timeline).")],
    target: Annotated[str, typer.Argument(metavar="TARGET", help="The service addressed, or broadcast.")],
    event: Annotated[str, typer.Argument(metavar="EVENT", help="The event, e.g. post:created or crud:read.")],
    kind: Annotated[
        str | None,
        typer.Option("--kind", metavar="KIND", help=f"One of {', '.join(KINDS)} [default: from EVENT, else emit]."),
    ] = None,
    resource: Annotated[str, typer.Option("--resource", metavar="NAME", help="The CRUD resource (kind crud).")] = "",
    policy_file: Annotated[
        Path | None, typer.Option("--policy", metavar="FILE", help="The policy file [default: IPC_POLICY].")
    ] = None,
) -> None:
    """Print allow or deny for one action, and the rule that decides (exit 1 on deny)."""
    policy = _load(policy_file)
    action = _action(source, target, event, kind, resource)
    decision = policy.decide(action)
    verdict = "allow" if decision.allowed else "deny"
    console.print(f"{verdict}: {action.kind} {source} → {target} {event} (rule {decision.rule!r})", highlight=False)
    if not decision.allowed:
        raise typer.Exit(1)


def _action(source: str, target: str, event: str, kind: str | None, resource: str) -> Action:
    crud = crud_operation(event) or ""
    if kind is None:
        kind = "crud" if crud else "jsonlex" if event == BusEvent.JSONLEX_EXECUTE else "emit"
    if kind not in KINDS:
        fail(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}", 2)
    if kind == "crud" and not crud:
        fail(f"kind crud needs EVENT crud:<{'|'.join(CRUD_OPERATIONS)}>", 2)
    return Action(kind, source, target, event, resource, crud)  # type: ignore[arg-type]
