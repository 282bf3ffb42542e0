"""``python -m benchmarks``: run the suites, print a table, write ``results/latest.json``."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from . import suite_bridge, suite_cluster, suite_memory, suite_redis, suite_replicas, suite_tokens
from .common import FULL, QUICK, ROOT, Profile, Row, Unavailable, machine_busy_seconds, own_seconds, payload_size

SUITES: dict[str, ModuleType] = {
    "tokens": suite_tokens,
    "memory": suite_memory,
    "bridge": suite_bridge,
    "redis": suite_redis,
    "replicas": suite_replicas,
    "cluster": suite_cluster,
}
RESULTS = Path(__file__).resolve().parent / "results"
#: Warn when other processes used more than this many cores on average during a suite.
OTHER_LOAD_WARNING = 0.25

#: Figures from the issue, for scale; measured on this machine by others, not by this run.
KNOWN_FIGURES = {
    "original Node worker, events/s": 2_800,
    "raw redis-py, events/s": 76_000,
}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
    }


def event_loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", None


async def _capped(coro: Awaitable[list[Row]], cap: float) -> list[Row]:
    return await asyncio.wait_for(coro, cap)


def run_suite(name: str, profile: Profile, loop_factory: Any, profile_dir: Path | None) -> dict[str, Any]:
    """Run one suite on a fresh event loop, cancelled after ``profile.suite_cap`` seconds."""
    module = SUITES[name]
    kwargs: dict[str, Any] = {}
    if profile_dir is not None and name == "bridge":
        kwargs["profile_dir"] = str(profile_dir)
    profiler = cProfile.Profile() if profile_dir is not None else None
    started = time.perf_counter()
    busy0, own0 = machine_busy_seconds(), own_seconds()
    result: dict[str, Any] = {"status": "ok", "rows": []}
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            if profiler is not None:
                profiler.enable()
            try:
                rows = runner.run(_capped(module.run(profile, **kwargs), profile.suite_cap))
            finally:
                if profiler is not None:
                    profiler.disable()
        result["rows"] = [row.as_dict() for row in rows]
    except Unavailable as exc:
        result.update(status="skipped", error=str(exc))
    except TimeoutError:
        result.update(status="error", error=f"cancelled after the {profile.suite_cap:g} s cap")
    except Exception as exc:
        result.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    seconds = time.perf_counter() - started
    result["seconds"] = round(seconds, 2)
    # CPU the rest of the machine used meanwhile (other users' jobs), in cores: it slows
    # ours and the baselines alike, but makes absolute numbers low and noisy.
    other = (machine_busy_seconds() - busy0) - (own_seconds() - own0)
    result["other_load_cores"] = round(max(other, 0.0) / seconds, 2) if seconds > 0 else 0.0
    if profiler is not None and profile_dir is not None:
        profiler.dump_stats(profile_dir / f"{name}-client.prof")
    return result


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def render(suites: dict[str, dict[str, Any]]) -> str:
    header = ("suite", "metric", "ours", "baseline", "ratio", "target", "met", "unit")
    lines: list[tuple[str, ...]] = []
    notes: list[str] = []
    for name, result in suites.items():
        baselines: list[str] = []
        if result["status"] != "ok":
            lines.append((name, f"{result['status'].upper()}: {result.get('error', '')}", "", "", "", "", "", ""))
            continue
        for row in result["rows"]:
            met = {True: "yes", False: "NO", None: ""}[row["met"]]
            ratio = f"{row['ratio']:.2f}×" if row["ratio"] is not None else ""
            lines.append(
                (
                    name,
                    row["metric"],
                    _num(row["ours"]),
                    _num(row["baseline"]),
                    ratio,
                    row["target"] or "",
                    met,
                    row["unit"],
                )
            )
            if row["baseline_name"] and row["baseline_name"] not in baselines:
                baselines.append(row["baseline_name"])
                notes.append(f"  {name} / {row['metric']}: baseline = {row['baseline_name']}")
            if row["note"]:
                notes.append(f"  {name} / {row['metric']}: {row['note']}")
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    right = {2, 3, 4}

    def fmt(cells: tuple[str, ...]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in lines)]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (well under 30 s in all)")
    parser.add_argument("--only", default=",".join(SUITES), help="comma-separated suites (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="where to write the JSON results")
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop of the client side (auto: uvloop when installed, like uvicorn)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="write cProfile dumps of each suite (and of the Bridge process) next to the output",
    )
    args = parser.parse_args(argv)
    args.suites = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown or not args.suites:
        parser.error(f"unknown suite(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SUITES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = QUICK if args.quick else FULL
    loop_name, loop_factory = event_loop_factory(args.loop)
    profile_dir = args.output.parent if args.profile else None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        **machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "profile": profile.name,
        "loop": loop_name,
        "payload_bytes": payload_size(),
        "loadavg_before": os.getloadavg(),
    }
    print(
        f"exprsn-ipc benchmarks ({profile.name}): {meta['nproc']} × {meta['cpu']}, Python {meta['python']}, "
        f"{loop_name}, load average {meta['loadavg_before'][0]:.2f}",
        flush=True,
    )
    started = time.perf_counter()
    suites: dict[str, dict[str, Any]] = {}
    for name in args.suites:
        print(f"  {name} …", end=" ", flush=True)
        suites[name] = run_suite(name, profile, loop_factory, profile_dir)
        result = suites[name]
        print(f"{result['status']} ({result['seconds']} s; other load {result['other_load_cores']} cores)", flush=True)
        if result.get("traceback"):
            print(result["traceback"], file=sys.stderr)
    meta["seconds"] = round(time.perf_counter() - started, 2)
    print()
    print(render(suites))
    print(
        "\nfor scale (from the issue, not measured here): "
        + ", ".join(f"{k} ≈ {v:,}" for k, v in KNOWN_FIGURES.items())
    )
    busiest = max((r["other_load_cores"] for r in suites.values()), default=0.0)
    if busiest > OTHER_LOAD_WARNING:
        print(
            f"warning: other processes used up to {busiest} of {meta['nproc']} cores during the run: absolute "
            "numbers are low and noisy; ours and the baselines alternate, so the ratios hold better"
        )
    args.output.write_text(
        json.dumps({"meta": meta, "known_figures": KNOWN_FIGURES, "suites": suites}, indent=2, ensure_ascii=False)
        + "\n"
    )
    print(f"results: {args.output} ({meta['seconds']} s)")
    return 1 if any(s["status"] == "error" for s in suites.values()) else 0
