"""A worker process whose durable handler never returns (killed by test_durable).

    python blocking_worker.py REDIS_URL BROKER_KEY SERVICE EVENT

Prints ``ready`` once it consumes, then ``handling <entry data>`` when the
handler starts, and blocks until it is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc.transport.redis.transport import RedisTransport


async def main(url: str, key: str, service: str, event: str) -> None:
    settings = Settings(_env_file=None, ipc_broker_key=key, redis_url=url, ipc_transport="redis", node_env="test")
    worker = IPCWorker(service, settings=settings, transport=RedisTransport(settings))

    @worker.on(event)
    async def block_forever(data: Any, meta: Any) -> None:
        print("handling", json.dumps(data), flush=True)
        await asyncio.Event().wait()

    await worker.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
