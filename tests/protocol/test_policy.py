"""Parsing and deciding an access policy (protocol/policy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exprsn_ipc.errors import ConfigError, PolicyDeniedError
from exprsn_ipc.protocol.policy import ALLOW_ALL, Action, Policy, classify, load_policy


def _policy(text: str, tmp_path: Path) -> Policy:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return load_policy(path)


def test_the_first_matching_rule_decides_and_names_itself(tmp_path: Path) -> None:
    policy = _policy(
        """
        [[rules]]
        name = "no-secrets"
        effect = "deny"
        events = ["secret:*"]
        [[rules]]
        name = "timeline"
        sources = ["timeline"]
        """,
        tmp_path,
    )
    assert policy.decide(Action("emit", "exprsn-timeline", "broadcast", "post:x")).rule == "timeline"
    assert not policy.decide(Action("emit", "exprsn-timeline", "broadcast", "secret:x")).allowed
    with pytest.raises(PolicyDeniedError, match="rule 'default'") as denied:
        policy.check(Action("emit", "exprsn-herald", "broadcast", "post:x"))
    assert denied.value.code == "FORBIDDEN" and denied.value.rule == "default"


def test_short_and_full_service_names_are_one(tmp_path: Path) -> None:
    policy = _policy('[[rules]]\nname = "a"\nsources = ["exprsn-auth"]\ntargets = ["timeline"]\n', tmp_path)
    assert policy.decide(Action("request", "auth", "exprsn-timeline", "x")).allowed
    assert policy.is_operator("exprsn-x") is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('colour = "red"', "unknown key"),
        ('default = "maybe"', "default must be"),
        ("[[rules]]\nkind = 'emit'", "needs a name"),
        ("[[rules]]\nname = 'a'\nkind = 'fly'", "unknown kind"),
        ("[[rules]]\nname = 'a'\noperations = ['upsert']", "unknown operation"),
        ("[[rules]]\nname = 'a'\n[[rules]]\nname = 'a'", "unique"),
        ("[[rules]]\nname = 'a'\ncolour = 1", "unknown key"),
        ("[[rules]]\nname = 'a'\nsources = [1]", "non-empty strings"),
        ("rules = [", "not valid TOML"),
    ],
)
def test_a_bad_policy_is_refused_saying_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _policy(text, tmp_path)


def test_a_missing_file_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="IPC_POLICY: cannot read"):
        load_policy(tmp_path / "nope.toml")


def test_no_policy_allows_everything_and_answers_are_no_actions() -> None:
    assert load_policy(None) is ALLOW_ALL and not ALLOW_ALL.configured
    assert ALLOW_ALL.decide(Action("jsonlex", "a", "b")).allowed
    assert classify("a", "b", "ipc:reply", request=False) is None
    crud = classify("a", "b", "crud:update", request=True, data={"resource": "posts"})
    assert crud == Action("crud", "a", "b", "crud:update", "posts", "update")
    assert classify("a", "b", "user:x", request=True) == Action("request", "a", "b", "user:x")
