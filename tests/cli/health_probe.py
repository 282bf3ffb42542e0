"""Poll ``<url>/health`` every ``interval`` seconds for ``seconds`` and print the latencies (JSON).

Run as its own process by the soak test, so that the test's busy event loop does not
count as the Bridge's latency: ``python -m tests.cli.health_probe URL SECONDS INTERVAL``.
Loopback only, bounded in time; it stops by itself.
"""

from __future__ import annotations

import json
import sys
import time

import httpx


def main() -> None:
    url, seconds, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    assert url.startswith(("http://127.0.0.1:", "http://localhost:")), "loopback only"
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                ok = http.get(f"{url}/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            failures += not ok
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    print(json.dumps({"latencies": latencies, "failures": failures}))


if __name__ == "__main__":
    main()
