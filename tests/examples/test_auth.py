"""exprsn-auth: accounts, sessions, its broadcasts and user:validate."""

from __future__ import annotations

import sqlite3

from exprsn_ipc.examples.exprsn_auth.app import hash_password, verify_password

from .conftest import PROBE, WAIT, StackFactory, headers


async def test_register_login_logout_broadcast_their_events(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-auth")
    alice = await stack.user("alice")
    created = await stack.tap.wait_for("user:created", target="broadcast", timeout=WAIT)
    assert created.data["userId"] == alice["userId"]
    assert created.data["email"] == alice["email"] and created.data["roles"] == ["user"]
    login = await stack.tap.wait_for("user:login", target="broadcast", timeout=WAIT)
    assert login.data["userId"] == alice["userId"] and login.data["sessionId"] == alice["sessionId"]
    assert set(login.data) == {"userId", "sessionId", "email", "roles", "timestamp"}

    response = await stack.http.post(stack.url("exprsn-auth", "/logout"), json={"sessionId": alice["sessionId"]})
    assert response.status_code == 200
    logout = await stack.tap.wait_for("user:logout", target="broadcast", timeout=WAIT)
    assert logout.data["sessionId"] == alice["sessionId"] and "timestamp" in logout.data
    again = await stack.http.post(stack.url("exprsn-auth", "/logout"), json={"sessionId": alice["sessionId"]})
    assert again.status_code == 404


async def test_bad_credentials_and_duplicates_are_refused(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-auth")
    alice = await stack.user("alice")
    wrong = await stack.http.post(
        stack.url("exprsn-auth", "/login"), json={"email": alice["email"], "password": "nope"}
    )
    assert wrong.status_code == 401
    assert wrong.json()["detail"]["error"] == "INVALID_CREDENTIALS"
    twice = await stack.http.post(
        stack.url("exprsn-auth", "/register"), json={"email": alice["email"], "password": "another password"}
    )
    assert twice.status_code == 409
    short = await stack.http.post(stack.url("exprsn-auth", "/register"), json={"email": "x@y.z", "password": "short"})
    assert short.status_code == 422


async def test_user_validate_replies_and_emits_user_validated_to_the_asker(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-auth")
    alice = await stack.user("alice")
    since = stack.tap.mark()
    reply = await stack.probe.request(
        "exprsn-auth", "user:validate", {"userId": alice["userId"], "sessionId": alice["sessionId"]}, timeout=WAIT
    )
    assert reply == {
        "userId": alice["userId"],
        "sessionId": alice["sessionId"],
        "valid": True,
        "roles": ["user"],
        "email": alice["email"],
    }
    # The guide's pattern too: user:validated goes to meta.source.
    validated = await stack.tap.wait_for("user:validated", target=PROBE, since=since, timeout=WAIT)
    assert validated.data == reply

    wrong = await stack.probe.request(
        "exprsn-auth", "user:validate", {"userId": alice["userId"], "sessionId": "forged"}, timeout=WAIT
    )
    assert wrong["valid"] is False and wrong["roles"] == [] and wrong["error"] == "unknown session"


async def test_update_and_delete_need_the_users_own_session(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-auth")
    alice, bob = await stack.user("alice"), await stack.user("bob")
    url = stack.url("exprsn-auth", f"/users/{alice['userId']}")
    assert (await stack.http.patch(url, json={"name": "Alice"})).status_code == 401
    assert (await stack.http.patch(url, json={"name": "Mallory"}, headers=headers(bob))).status_code == 403

    response = await stack.http.patch(url, json={"name": "Alice"}, headers=headers(alice))
    assert response.status_code == 200 and response.json()["data"]["name"] == "Alice"
    updated = await stack.tap.wait_for("user:updated", target="broadcast", timeout=WAIT)
    assert updated.data["userId"] == alice["userId"] and updated.data["updates"] == {"name": "Alice"}

    response = await stack.http.delete(url, headers=headers(alice))
    assert response.status_code == 200
    deleted = await stack.tap.wait_for("user:deleted", target="broadcast", timeout=WAIT)
    assert deleted.data["userId"] == alice["userId"]
    # The account and its sessions are gone.
    reply = await stack.probe.request(
        "exprsn-auth", "user:validate", {"userId": alice["userId"], "sessionId": alice["sessionId"]}, timeout=WAIT
    )
    assert reply["valid"] is False


async def test_password_reset_request_triggers_a_herald_notification(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-auth", watch=("exprsn-herald",))
    alice = await stack.user("alice")
    await stack.probe.emit("password:reset:request", {"email": alice["email"]}, target="exprsn-auth")
    trigger = await stack.tap.wait_for("notification:trigger", target="exprsn-herald", timeout=WAIT)
    assert trigger.data == {"type": "password_reset", "email": alice["email"], "userId": alice["userId"]}


async def test_passwords_are_stored_as_salted_scrypt_hashes(services_stack: StackFactory, tmp_path) -> None:
    stack = await services_stack("exprsn-auth")
    await stack.user("alice")
    with sqlite3.connect(tmp_path / "exprsn-auth.db") as conn:
        password_hash, salt = conn.execute("SELECT password_hash, salt FROM users").fetchone()
    assert b"correct horse" not in password_hash and len(salt) == 16
    assert verify_password("correct horse", password_hash, salt)
    assert not verify_password("correct horsE", password_hash, salt)
    first, salt1 = hash_password("same")
    second, salt2 = hash_password("same")
    assert salt1 != salt2 and first != second
