"""exprsn-timeline with exprsn-moderator and exprsn-herald: a post's whole path."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from exprsn_ipc.examples.exprsn_moderator.classifier import classify
from exprsn_ipc.examples.exprsn_timeline.app import moderation_status

from .conftest import PROBE, WAIT, Stack, StackFactory, headers

ALL = ("exprsn-auth", "exprsn-moderator", "exprsn-herald", "exprsn-timeline")


async def _status(stack: Stack, post_id: str, wanted: str) -> dict:
    """The post once its moderation status is ``wanted`` (HTTP state: polled, bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        body = (await stack.http.get(stack.url("exprsn-timeline", f"/posts/{post_id}"))).json()
        if body["data"]["moderation"]["status"] == wanted or time.monotonic() > deadline:
            return body["data"]
        await asyncio.sleep(0.02)


async def test_a_post_is_validated_stored_moderated_and_notified(services_stack: StackFactory) -> None:
    stack = await services_stack(*ALL)
    alice = await stack.user("alice")
    since = stack.tap.mark()
    response = await stack.http.post(
        stack.url("exprsn-timeline", "/posts"), json={"content": "hello world"}, headers=headers(alice)
    )
    assert response.status_code == 201, response.text
    post = response.json()["data"]
    assert post["userId"] == alice["userId"] and post["moderation"]["status"] == "pending"

    hops = stack.tap
    validate = await hops.wait_for("user:validate", target="exprsn-auth", since=since, timeout=WAIT)
    assert validate.request and validate.data == {"userId": alice["userId"], "sessionId": alice["sessionId"]}
    created = await hops.wait_for("post:created", target="broadcast", since=since, timeout=WAIT)
    assert created.data == {
        "id": post["id"],
        "userId": alice["userId"],
        "content": "hello world",
        "createdAt": post["createdAt"],
    }
    moderate = await hops.wait_for("content:moderate", target="exprsn-moderator", since=since, timeout=WAIT)
    assert moderate.data == {
        "contentId": post["id"],
        "type": "post",
        "content": "hello world",
        "userId": alice["userId"],
    }
    trigger = await hops.wait_for("notification:trigger", target="exprsn-herald", since=since, timeout=WAIT)
    assert trigger.data == {"type": "new_post", "userId": alice["userId"], "postId": post["id"]}

    moderated = await hops.wait_for("content:moderated", target="exprsn-timeline", since=since, timeout=WAIT)
    assert moderated.data == {
        "contentId": post["id"],
        "type": "post",
        "result": {"approved": True, "flagged": False, "reason": "clean"},
    }
    assert (await _status(stack, post["id"], "approved"))["moderation"]["status"] == "approved"

    sent = await hops.wait_for("notification:sent", target="exprsn-timeline", since=since, timeout=WAIT)
    assert sent.data["userId"] == alice["userId"] and sent.data["status"] == "delivered"
    assert set(sent.data) == {"notificationId", "userId", "deliveredAt", "status"}
    listed = await stack.http.get(
        stack.url("exprsn-herald", "/notifications"), params={"userId": alice["userId"]}, headers=headers(alice)
    )
    assert listed.status_code == 200
    [stored] = listed.json()["data"]
    assert stored["id"] == sent.data["notificationId"] and stored["data"]["postId"] == post["id"]

    # The timeline's own post:created handler fed its recent-posts cache.
    assert post["id"] in stack.apps["exprsn-timeline"].state.recent_posts


async def test_flagged_content_is_rejected_broadcast_and_reported_to_moderators(services_stack: StackFactory) -> None:
    stack = await services_stack(*ALL)
    alice = await stack.user("alice")
    since = stack.tap.mark()
    response = await stack.http.post(
        stack.url("exprsn-timeline", "/posts"), json={"content": "FR33 M0NEY, click here"}, headers=headers(alice)
    )
    post_id = response.json()["data"]["id"]
    moderated = await stack.tap.wait_for("content:moderated", target="exprsn-timeline", since=since, timeout=WAIT)
    assert moderated.data["result"] == {
        "approved": False,
        "flagged": True,
        "reason": "blocked term 'free money' (spam)",
    }
    flagged = await stack.tap.wait_for("content:flagged", target="broadcast", since=since, timeout=WAIT)
    assert flagged.data["contentId"] == post_id and flagged.data["categories"] == ["spam"]
    assert flagged.data["userId"] == alice["userId"] and flagged.data["confidence"] == 0.95
    moderators = await stack.tap.wait_for(
        "notification:trigger", target="exprsn-herald", since=since, where=lambda d: d["type"] == "content_flagged"
    )
    assert moderators.data == {
        "type": "content_flagged",
        "moderators": True,
        "contentId": post_id,
        "reason": "blocked term 'free money' (spam)",
    }
    assert (await _status(stack, post_id, "rejected"))["moderation"]["reason"] == "blocked term 'free money' (spam)"
    verdict = await stack.http.get(stack.url("exprsn-moderator", f"/moderation/{post_id}"), headers=headers(alice))
    assert verdict.status_code == 200 and verdict.json()["data"]["result"]["flagged"] is True


async def test_posting_needs_a_valid_session(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-auth", "exprsn-timeline")
    url = stack.url("exprsn-timeline", "/posts")
    assert (await stack.http.post(url, json={"content": "x"})).status_code == 401
    forged = {"x-user-id": "someone", "x-session-id": "forged"}
    response = await stack.http.post(url, json={"content": "x"}, headers=forged)
    assert response.status_code == 401 and response.json()["detail"]["message"] == "invalid or expired session"


async def test_posting_without_exprsn_auth_is_503_at_once(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-timeline")
    started = time.monotonic()
    response = await stack.http.post(
        stack.url("exprsn-timeline", "/posts"), json={"content": "x"}, headers={"x-user-id": "u", "x-session-id": "s"}
    )
    assert response.status_code == 503 and response.json()["detail"]["error"] == "AUTH_UNAVAILABLE"
    assert time.monotonic() - started < 2  # NoReceiversError, not a timeout


async def test_development_bypass_admits_loopback_requests_with_the_guides_header(
    services_stack: StackFactory,
) -> None:
    stack = await services_stack("exprsn-timeline", node_env="development", dev_bypass=True)
    response = await stack.http.post(
        stack.url("exprsn-timeline", "/posts"), json={"content": "from a script"}, headers={"x-ipc-request": "true"}
    )
    assert response.status_code == 201 and response.json()["data"]["userId"] == "dev-bypass-user"
    # Outside development the same header gets nothing.
    strict = await services_stack("exprsn-timeline", "exprsn-auth", node_env="production", dev_bypass=True)
    response = await strict.http.post(
        strict.url("exprsn-timeline", "/posts"), json={"content": "x"}, headers={"x-ipc-request": "true"}
    )
    assert response.status_code == 401


async def test_user_updated_refreshes_the_timelines_user_cache(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-timeline")
    await stack.probe.emit("user:updated", {"userId": "u1", "updates": {"name": "A"}})
    await stack.probe.emit("user:updated", {"userId": "u1", "updates": {"avatar": "b.png"}})
    db = stack.apps["exprsn-timeline"].state.db
    deadline = time.monotonic() + WAIT
    row = None
    while time.monotonic() < deadline:
        row = await db.fetchone("SELECT data FROM user_cache WHERE user_id = 'u1'")
        if row is not None and "avatar" in row["data"]:
            break
        await asyncio.sleep(0.02)
    assert row is not None and json.loads(row["data"]) == {"name": "A", "avatar": "b.png"}


async def test_herald_reports_unknown_notifications_as_failed(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-herald")
    reply = await stack.probe.request("exprsn-herald", "notification:trigger", {"type": "bogus", "userId": "u"})
    assert reply["status"] == "failed"
    sent = await stack.tap.wait_for("notification:sent", target=PROBE, timeout=WAIT)
    assert sent.data["status"] == "failed" and sent.data["notificationId"] == reply["notificationId"]
    ok = await stack.probe.request(
        "exprsn-herald", "notification:trigger", {"type": "content_flagged", "moderators": True, "contentId": "c"}
    )
    assert ok["status"] == "delivered" and ok["userId"] == "moderators"


async def test_herald_lists_only_the_callers_own_notifications(services_stack: StackFactory) -> None:
    stack = await services_stack("exprsn-auth", "exprsn-herald")
    alice, bob = await stack.user("alice"), await stack.user("bob")
    url = stack.url("exprsn-herald", "/notifications")
    response = await stack.http.get(url, params={"userId": alice["userId"]}, headers=headers(bob))
    assert response.status_code == 403
    assert (await stack.http.get(url, params={"userId": alice["userId"]})).status_code == 401


@pytest.mark.parametrize(
    ("content", "approved", "flagged", "reason"),
    [
        ("A lovely day at the beach", True, False, "clean"),
        ("I will KILL YOU tomorrow", False, True, "blocked term 'kill you' (threat)"),
        ("please s3nd b1tcoin now", False, True, "blocked term 'send bitcoin' (scam)"),
        ("you are such an idiot", False, True, "blocked term 'idiot' (abuse)"),
        ("idiotic plans are fun", True, False, "clean"),  # whole words only
        ("see https://a.x https://b.x www.c.x http://d.x", False, True, "too many links (4 > 3)"),
        ("THIS IS ALL CAPS AND VERY LOUD INDEED", True, True, "excessive capitals"),
        ("soooooooooooo good", True, True, "repeated characters"),
        ("x" * 5001, False, True, "too long (5001 > 5000 characters)"),
        ("Meet me in 2024 at 5", True, False, "clean"),
    ],
)
def test_classifier_rules(content: str, approved: bool, flagged: bool, reason: str) -> None:
    verdict = classify(content)
    assert verdict.result() == {"approved": approved, "flagged": flagged, "reason": reason}
    assert classify(content) == verdict  # deterministic


def test_moderation_status_mapping() -> None:
    assert moderation_status({"approved": True, "flagged": False}) == "approved"
    assert moderation_status({"approved": True, "flagged": True}) == "review"
    assert moderation_status({"approved": False, "flagged": True}) == "rejected"
    assert moderation_status(None) == "pending"
