"""tokens: sign + verify one broker token, ours against PyJWT HS256 with the same claims."""

from __future__ import annotations

from exprsn_ipc.protocol.envelope import Envelope
from exprsn_ipc.protocol.tokens import BrokerTokenManager

from .common import (
    EVENT,
    RECEIVER,
    SENDER,
    Profile,
    Row,
    Target,
    Unavailable,
    bench_payload,
    bench_settings,
    micro,
    payload_size,
)

NAME = "tokens"
BASELINE = "PyJWT HS256"


async def run(profile: Profile) -> list[Row]:
    try:
        import jwt
    except ImportError:
        raise Unavailable("PyJWT is not installed (pip install -e '.[test]')") from None
    settings = bench_settings()
    key = settings.broker_key_bytes
    signer = BrokerTokenManager(service_name=SENDER, settings=settings)
    verifier = BrokerTokenManager(service_name=RECEIVER, settings=settings)
    payload = bench_payload()

    # Both sides build fresh claims per token (a new id and exp), exactly as a sender does.
    def claims() -> dict[str, object]:
        return signer.build_claims(payload, target_service=RECEIVER, operation="event", metadata={"event": EVENT})

    def ours_sign() -> str:
        return signer.sign_claims(claims())

    def pyjwt_sign() -> str:
        return jwt.encode(claims(), key, algorithm="HS256")

    ours_token, pyjwt_token = ours_sign(), pyjwt_sign()
    # Same standard: each side verifies the other's tokens.
    assert verifier.verify_token(pyjwt_token)["data"] == payload
    assert jwt.decode(ours_token, key, algorithms=["HS256"])["data"] == payload

    def envelope_round() -> None:
        envelope = signer.sign_envelope(EVENT, payload, target=RECEIVER)
        verifier.verify_envelope(Envelope.decode(envelope.encode()))

    t = micro(
        {
            "ours sign": ours_sign,
            "pyjwt sign": pyjwt_sign,
            "ours verify": lambda: verifier.verify_token(ours_token),
            "pyjwt verify": lambda: jwt.decode(pyjwt_token, key, algorithms=["HS256"]),
            "envelope": envelope_round,
        },
        profile,
    )
    sign = t["ours sign"], t["pyjwt sign"]
    verify = t["ours verify"], t["pyjwt verify"]
    per_message = t["envelope"]
    note = f"{payload_size()} B payload, token {len(ours_token)} B"
    return [
        Row(NAME, "sign", "µs", sign[0] * 1e6, sign[1] * 1e6, BASELINE),
        Row(NAME, "verify", "µs", verify[0] * 1e6, verify[1] * 1e6, BASELINE),
        Row(
            NAME,
            "sign + verify",
            "µs",
            (sign[0] + verify[0]) * 1e6,
            (sign[1] + verify[1]) * 1e6,
            BASELINE,
            Target("abs_max", 50.0),
            note,
        ),
        Row(
            NAME,
            "envelope sign+encode+decode+verify",
            "µs",
            per_message * 1e6,
            note="the whole per-message crypto and JSON cost of one event (no baseline)",
        ),
    ]
