"""The benchmark command: ``scripts/bench [--quick] [--json PATH] [--only ITEM ...]``.

Runs the six measurements of issue 7 on the real Docker engine and the
stand-in driver, with the real daemon as a subprocess, and prints a table of
figures beside their targets plus a JSON document (``--json``). It never
fails because a machine is slow: a missed target is a figure, not an error.
It exits non-zero only when the bench itself cannot run (no engine, not
root, a build failure) or a measurement could not complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from bench import idle, latency, recovery, repeat, scale, silent, startup
from bench.harness import Lab, machine_info, remove_stale_lab_containers

ITEMS = ("latency", "recovery", "silent", "silent_v2", "idle", "scale", "startup")


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is."""

    latency_trials: int
    repeat_faults: int
    recovery_trials: int
    silent_containers: int
    silent_interval: float
    idle_containers: int
    idle_seconds: float
    scale_levels: tuple[tuple[int, int], ...]
    scale_seconds: float
    scale_injections: int
    startup_containers: int


FULL = Sizes(
    latency_trials=60,
    repeat_faults=10,
    recovery_trials=3,
    silent_containers=20,
    silent_interval=5.0,
    idle_containers=50,
    idle_seconds=60.0,
    # The level is 200 x 100; the levels after it look for the break.
    scale_levels=((50, 100), (200, 100), (200, 200), (300, 200), (300, 400)),
    scale_seconds=20.0,
    scale_injections=40,
    startup_containers=50,
)
QUICK = Sizes(
    latency_trials=20,
    repeat_faults=5,
    recovery_trials=1,
    silent_containers=8,
    silent_interval=5.0,
    idle_containers=20,
    idle_seconds=15.0,
    scale_levels=((50, 100),),
    scale_seconds=8.0,
    scale_injections=10,
    startup_containers=20,
)
#: The smallest configuration that still produces every figure (the smoke test).
TINY = Sizes(
    latency_trials=3,
    repeat_faults=2,
    recovery_trials=1,
    silent_containers=3,
    silent_interval=2.0,
    idle_containers=3,
    idle_seconds=3.0,
    scale_levels=((3, 20),),
    scale_seconds=4.0,
    scale_injections=2,
    startup_containers=3,
)
SIZES = {"full": FULL, "quick": QUICK, "tiny": TINY}

#: Every figure the JSON carries (dotted paths); the smoke test checks them all.
FIGURE_KEYS = (
    "machine.cpus",
    "machine.docker_version",
    "latency.median_ms",
    "latency.p95_ms",
    "latency.p99_ms",
    "latency.missed",
    "latency.repeated.restart_max_s",
    "latency.repeated.line_to_matched_median_s",
    "recovery.docker_restart_s",
    "recovery.steps_s.detected",
    "recovery.steps_s.persistence_enabled",
    "recovery.steps_s.restarted",
    "recovery.steps_s.verified",
    "recovery.total_s",
    "silent.probe_interval_s",
    "silent.max_ms",
    "silent.max_over_interval_ms",
    "silent_v2.max_ms",
    "silent_v2.max_over_interval_ms",
    "idle.gpuwatchd.cpu_pct",
    "idle.gpuwatchd.rss_mb",
    "idle.gpuwatchd.threads",
    "idle.gpuwatchd.fds",
    "idle.threads_per_container",
    "idle.fds_per_container",
    "scale.levels.0.missed",
    "scale.levels.0.lag.p99_ms",
    "scale.levels.0.gpuwatchd.cpu_pct",
    "scale.levels.0.gpuwatchd.rss_mb",
    "scale.levels.0.dockerd.cpu_pct",
    "scale.levels.0.dockerd.rss_mb",
    "startup.ready_s",
    "startup.first_round_s",
    "startup.import_s",
)


def lookup(doc: Any, dotted: str) -> Any:
    """The value at a dotted path (list indices are numbers). Raises KeyError when absent."""
    for part in dotted.split("."):
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise KeyError(dotted)
    return doc


def run_all(sizes: Sizes, only: tuple[str, ...], quiet: bool = False) -> dict[str, Any]:
    """Runs the selected measurements; each one's failure is recorded, the rest go on."""
    client = docker.from_env(timeout=120)
    try:
        leftovers = remove_stale_lab_containers(client)
        doc: dict[str, Any] = {
            "machine": machine_info(client),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sizes": sizes.__dict__ | {"scale_levels": [list(x) for x in sizes.scale_levels]},
            "leftovers_removed": leftovers,
        }
        doc["machine"]["others_running_containers"] = len(client.containers.list())
    finally:
        client.close()
    steps: dict[str, Callable[[Lab], dict[str, Any]]] = {
        "latency": lambda lab: {
            **latency.measure(lab, sizes.latency_trials),
            "repeated": repeat.measure(lab, sizes.repeat_faults),
        },
        "recovery": lambda lab: recovery.measure(lab, sizes.recovery_trials),
        "silent": lambda lab: silent.measure(lab, sizes.silent_containers, sizes.silent_interval),
        "silent_v2": lambda lab: silent.measure(
            lab, sizes.silent_containers, sizes.silent_interval, model="v2"
        ),
        "idle": lambda lab: idle.measure(lab, sizes.idle_containers, sizes.idle_seconds),
        "scale": lambda lab: scale.measure(
            lab, sizes.scale_levels, sizes.scale_seconds, sizes.scale_injections
        ),
        "startup": lambda lab: {
            **startup.measure(lab, sizes.startup_containers), **startup.import_time()
        },
    }
    errors: dict[str, str] = {}
    doc["run_ids"] = []
    for item in ITEMS:
        if item not in only:
            continue
        t = time.monotonic()
        try:
            with Lab(quiet=quiet) as lab:
                doc["run_ids"].append(lab.run_id)
                doc[item] = steps[item](lab)
        except Exception as exc:  # one measurement failing must not lose the others
            errors[item] = f"{type(exc).__name__}: {exc}"
            if not quiet:
                traceback.print_exc(file=sys.stderr)
        else:
            doc[item]["wall_s"] = round(time.monotonic() - t, 1)
    doc["errors"] = errors
    return doc


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{value}{unit}"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def table(doc: dict[str, Any]) -> str:
    """The figures beside their targets, as a Markdown table."""
    rows: list[tuple[str, str, str, str]] = []

    def get(path: str) -> Any:
        try:
            return lookup(doc, path)
        except (KeyError, IndexError, ValueError):
            return None

    def row(what: str, value: Any, unit: str, target: str, ok: bool | None) -> None:
        rows.append((what, _fmt(value, unit), target, _met(ok)))

    def le(value: Any, bound: float) -> bool | None:
        return None if value is None else value <= bound

    if "latency" in doc:
        m, p95, p99 = get("latency.median_ms"), get("latency.p95_ms"), get("latency.p99_ms")
        row(f"1. log detection latency, median (n={get('latency.n')})", m, " ms", "≤ 100 ms",
            le(m, 100))
        row("1. log detection latency, p95", p95, " ms", "", None)
        row("1. log detection latency, p99", p99, " ms", "≤ 300 ms", le(p99, 300))
        each = get("latency.repeated.restart_s") or []
        worst = get("latency.repeated.restart_max_s")
        row(f"1b. repeated fault → restart, one container, {len(each)} faults "
            "(first ER-05 line → container_restarted)",
            " / ".join(_fmt(v) for v in each) or None, " s", "each ≤ 2 s", le(worst, 2.0))
        med = get("latency.repeated.line_to_matched_median_s")
        row(f"1b. {get('latency.repeated.faults')} log-path faults in a row: line → "
            "log_pattern_matched, median", med, " s", "≤ 0.1 s", le(med, 0.1))
        row("1b. … restarts / ER-05 lines per fault",
            f"{get('latency.repeated.restarts')} / "
            + " ".join(str(r["er05_lines"]) for r in get("latency.repeated.per_fault") or []),
            "", "", None)
    if "recovery" in doc:
        restart = get("recovery.docker_restart_s")
        target = None if restart is None else restart + 2.0
        for step in recovery.STEPS:
            row(f"2. recovery step: {step}", get(f"recovery.steps_s.{step}"), " s", "", None)
        row("2. container's own docker restart", restart, " s", "", None)
        total = get("recovery.total_s")
        row("2. time to recovery, total (defaults)", total, " s",
            f"≤ restart + 2 s = {_fmt(target and round(target, 2), ' s')}",
            None if target is None else le(total, target))
        short = get("recovery.start_grace_1s.total_s")
        if short is not None:
            row("2. time to recovery, total (start_grace = 1s)", short, " s",
                f"≤ {_fmt(target and round(target, 2), ' s')}",
                None if target is None else le(short, target))
    if "silent" in doc:
        interval = get("silent.probe_interval_s")
        mx = get("silent.max_ms")
        row(f"3. silent loss detection, median (interval {_fmt(interval, ' s')})",
            get("silent.median_ms"), " ms", "", None)
        row("3. silent loss detection, max", mx, " ms",
            f"≤ interval + 1 s = {_fmt(interval and (interval + 1) * 1000, ' ms')}",
            None if mx is None or interval is None else mx <= (interval + 1) * 1000)
        row("3. max - interval (overhead)", get("silent.max_over_interval_ms"), " ms", "", None)
    if "idle" in doc:
        n = get("idle.containers")
        cpu = get("idle.gpuwatchd.cpu_pct")
        rss = get("idle.gpuwatchd.rss_mb")
        row(f"4. idle CPU, {n} containers", cpu, " % of a core", "≤ 1 %", le(cpu, 1.0))
        row("4. idle RSS", rss, " MB", "≤ 60 MB", le(rss, 60))
        row("4. threads (empty → loaded)",
            f"{get('idle.empty_gpuwatchd.threads')} → {get('idle.gpuwatchd.threads')}", "",
            f"bounded: {get('idle.threads_per_container')}/container", None)
        row("4. open fds (empty → loaded)",
            f"{get('idle.empty_gpuwatchd.fds')} → {get('idle.gpuwatchd.fds')}", "",
            f"bounded: {get('idle.fds_per_container')}/container", None)
        row("4. dockerd CPU meanwhile", get("idle.dockerd.cpu_pct"), " % of a core", "", None)
    if "scale" in doc:
        for level in get("scale.levels") or []:
            tag = f"5. {level['containers']}x{level['lines_per_s_each']} lines/s"
            row(f"{tag}: missed / injected", f"{level['missed']}/{level['injected']}", "", "0",
                level["missed"] == 0)
            p99 = level["lag"]["p99_ms"]
            row(f"{tag}: lag p99 (engine / gpuwatchd part)",
                f"{_fmt(p99)} ({_fmt(level['engine_lag']['p99_ms'])} / "
                f"{_fmt(level['gpuwatchd_lag']['p99_ms'])})", " ms", "≤ 1000 ms", le(p99, 1000))
            g, d = level["gpuwatchd"], level["dockerd"]
            row(f"{tag}: CPU gpuwatchd / dockerd",
                f"{_fmt(g['cpu_pct'])} / {_fmt(d['cpu_pct'])}", " % of a core", "", None)
            row(f"{tag}: RSS gpuwatchd / dockerd",
                f"{_fmt(g['rss_mb'])} / {_fmt(d['rss_mb'])}", " MB", "", None)
            row(f"{tag}: written lines/s, refused writes",
                f"{level['written_lines_per_s']}, {level['engine_refused_writes']}", "",
                f"offered {level['offered_lines_per_s']}", None)
            if not level["ok"]:
                row(f"{tag}: breaks; limit", level["limit"], "", "", None)
    if "startup" in doc:
        n = get("startup.containers")
        ready = get("startup.ready_s")
        first = get("startup.first_round_s")
        row(f"6. start → READY=1, {n} containers", ready, " s", "≤ 1 s", le(ready, 1.0))
        row("6. start → all containers watched", get("startup.all_watched_s"), " s", "", None)
        row(f"6. start → first complete probe round (interval "
            f"{_fmt(get('startup.first_round_probe_interval_s'), ' s')})", first, " s", "≤ 3 s",
            le(first, 3.0))
        row("6. import gpuwatchd.daemon (-X importtime)", get("startup.import_s"), " s", "",
            None)
    head = ("Figure", "Value", "Target", "Met")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)


def header(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return (f"gpuwatchd benchmarks, {doc['started']}: {m['cpus']} CPUs ({m['cpu_model']}), "
            f"{m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}, "
            f"Docker {m['docker_version']} (API {m['docker_api']}, cgroup {m['cgroup']}, "
            f"{m['storage_driver']}, log driver {m['log_driver']}); "
            f"{m['others_running_containers']} other containers running")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller runs (about 3 minutes)")
    size.add_argument("--tiny", action="store_true", help="the smoke test's size (seconds)")
    parser.add_argument("--json", type=Path, default=Path(".bench/bench.json"),
                        help="where to write the JSON figures (default: .bench/bench.json)")
    parser.add_argument("--only", nargs="+", choices=ITEMS, default=list(ITEMS),
                        help="run only these measurements")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/bench: run as root (cgroup device rules, /proc of dockerd, sysctl)",
              file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    t = time.monotonic()
    doc = run_all(sizes, tuple(args.only), quiet=args.quiet)
    doc["wall_s"] = round(time.monotonic() - t, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(header(doc))
    print()
    print(table(doc))
    print()
    for item, error in doc["errors"].items():
        print(f"{item}: could not be measured: {error}")
    print(f"JSON: {args.json} ({doc['wall_s']} s)")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
