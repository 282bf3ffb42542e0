"""One replica of exprsn-auth as its own process, for the rolling-restart test.

``python -m tests.e2e.replica_process BRIDGE_URL LOG`` connects an IPCWorker on
the bridge transport, answers ``user:validate`` (5 ms each, one at a time) and
appends each call's number to ``LOG``. It prints ``ready <instance id>`` once
started, and on SIGTERM leaves as a rolling restart should (``IPCWorker.disconnect``):
it stops being chosen, answers what is already on its way, then exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from exprsn_ipc import IPCWorker, Settings
from exprsn_ipc.transport.bridge import BridgeTransport


async def main(url: str, log_path: str) -> None:
    settings = Settings.load(env_file=None)
    worker = IPCWorker(
        "exprsn-auth", settings=settings, transport=BridgeTransport(settings, url=url), max_concurrency=1
    )
    with open(log_path, "a", encoding="utf-8") as log:

        async def validate(data: Any, meta: Any) -> dict[str, Any]:
            await asyncio.sleep(0.005)
            log.write(f"{data['n']}\n")
            log.flush()
            return {"n": data["n"], "by": worker.instance_id}

        worker.on("user:validate", validate)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await worker.start()
        print(f"ready {worker.instance_id}", flush=True)
        await stop.wait()
        await worker.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
