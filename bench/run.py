"""Run the benchmark scenarios (`make bench`, or `make bench-quick` for the small versions) and
compare their figures with the targets.

    python bench/run.py [--quick] [SCENARIO ...]

Each scenario is its own script in bench/ that prints one JSON object per result (see
bench/common.py) and shows its progress on stderr. This runs them one after the other in their
own processes, keeps every result in `bench/results/<scenario>.json` (the latest run) and
`bench/results/history.jsonl` (all runs), and ends with a table of each figure against its
target. Exit status 1 when a scenario failed its own check or could not run; a target that is
not met is reported as such, not as a failure of the harness.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"


@dataclass(frozen=True)
class Target:
    """A figure of a result and the bound the issue sets for it on this 2-core machine."""

    figure: str
    compare: Callable[[float, float], bool]
    bound: float
    text: str
    when: dict[str, Any] | None = None  # the parameters the bound is set for (else "n/a")
    only: dict[str, Any] | None = None  # results of other parameters do not show this target


@dataclass(frozen=True)
class Scenario:
    """One question, one script; `quick` is the small version that checks the same things."""

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    targets: tuple[Target, ...]


AT_LEAST, AT_MOST, BELOW = operator.ge, operator.le, operator.lt

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("collector", "collector_cpu.py", (), ("--quick",), (
        Target("readings_per_cpu_s", AT_LEAST, 50_000, ">= 50,000 readings per collector CPU-s"),)),
    Scenario("ingest-grpc", "ingest_grpc.py", (), ("--quick",), (
        Target("readings_per_cpu_s", AT_LEAST, 100_000, ">= 100,000 readings per gateway CPU-s "
               "(SQLite)", None, {"ledger": "sqlite"}),)),
    Scenario("ingest-mqtt", "mqtt_ingest.py", (), ("--quick",), (
        Target("readings_per_cpu_s", AT_LEAST, 50_000, ">= 50,000 readings per gateway CPU-s"),)),
    Scenario("drain", "drain.py", (), ("--quick",), (
        Target("wall_s", AT_MOST, 60, "<= 60 s for a 24-hour backlog over gRPC",
               {"blocks": 86_400}, {"transport": "grpc"}),
        Target("wall_s", AT_MOST, 120, "<= 120 s for a 24-hour backlog over MQTT",
               {"blocks": 86_400}, {"transport": "mqtt"}))),
    Scenario("fleet", "fleet.py", (), ("--quick",), (
        Target("sustained_readings_per_s", AT_LEAST, 86_480, ">= 86,480 readings/s sustained",
               {"collectors": 2162}),
        Target("p99_latency_s", BELOW, 1.0, "p99 block latency < 1 s", {"collectors": 2162}),
        Target("lost_blocks", AT_MOST, 0, "nothing lost"),
        Target("gateway_peak_rss_mib", BELOW, 1024, "gateway < 1 GiB", {"collectors": 2162}))),
    Scenario("sink", "sink.py", (), ("--quick",), (
        Target("points_per_s", AT_LEAST, 200_000, ">= 200,000 points/s into VictoriaMetrics"),)),
    Scenario("verify", "verify.py", (), ("--quick",), (
        Target("blocks_per_s", AT_LEAST, 15_000, ">= 15,000 blocks/s checked",
               {"blocks": 100_000}),)),
    Scenario("log-proof", "log_proof.py", (), ("--quick",), (
        Target("inclusion_proof_cpu_us", BELOW, 1000, "< 1 ms of gateway CPU per inclusion proof",
               {"blocks": 1_000_000}),)),
)


def _run(scenario: Scenario, quick: bool) -> tuple[list[dict[str, Any]], str | None]:
    """Run one scenario's script; its results, and why it could not run (None when it ran)."""
    script = BENCH / scenario.script
    if not script.exists():
        return [], f"bench/{scenario.script} does not exist yet"
    args = list(scenario.quick if quick else scenario.full)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH), str(REPO)]))
    print(f"==> {scenario.name}{' (quick)' if quick else ''}: bench/{scenario.script} "
          f"{' '.join(args)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    process = subprocess.run([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                             text=True, env=env, cwd=REPO, check=False)
    results = []
    for line in process.stdout.splitlines():
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            print(line, file=sys.stderr)
            continue
        if isinstance(document, dict) and "scenario" in document:
            document.setdefault("quick", quick)
            results.append(document)
    print(f"    {len(results)} result(s) in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if not results:
        return [], f"exit status {process.returncode} and no result"
    return results, None


def _verdict(target: Target, document: dict[str, Any]) -> str | None:
    """met / NOT MET for a result the target applies to; None when it does not apply."""
    parameters = document.get("parameters") or {}
    if any(parameters.get(k) != v for k, v in {**(target.when or {}), **(target.only or {})}.items()):
        return None
    figures = document.get("figures")
    if not figures or figures.get(target.figure) is None:
        return None
    return "met" if target.compare(float(figures[target.figure]), target.bound) else "NOT MET"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small version of every scenario")
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(s.name for s in SCENARIOS)}")
    args = parser.parse_args()
    known = {s.name: s for s in SCENARIOS}
    unknown = [name for name in args.scenarios if name not in known]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [known[name] for name in args.scenarios] or list(SCENARIOS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, ...]] = [("scenario", "parameters", "figure", "value", "target", "verdict")]
    status = 0
    for scenario in chosen:
        results, problem = _run(scenario, args.quick)
        if problem is not None:
            rows.append((scenario.name, "", "", "", "", f"DID NOT RUN: {problem}"))
            status = 1
            continue
        (RESULTS / f"{scenario.name}.json").write_text(json.dumps(results, indent=2) + "\n")
        with (RESULTS / "history.jsonl").open("a") as history:
            for document in results:
                history.write(json.dumps(document) + "\n")
        for document in results:
            shown = ", ".join(f"{k}={v}" for k, v in (document.get("parameters") or {}).items())
            if document.get("failure"):
                rows.append((scenario.name, shown, "", "", "", f"FAILED: {document['failure']}"))
                status = 1
                continue
            before = len(rows)
            for target in scenario.targets:
                value = (document.get("figures") or {}).get(target.figure)
                parameters = document.get("parameters") or {}
                if value is None or any(parameters.get(k) != v
                                        for k, v in (target.only or {}).items()):
                    continue
                verdict = _verdict(target, document) or "n/a: the target is for " + ", ".join(
                    f"{k}={v}" for k, v in (target.when or {}).items())
                rows.append((scenario.name, shown, target.figure, str(value), target.text,
                             verdict))
            if len(rows) == before and scenario.targets:  # measured, with no bound for it
                figure = scenario.targets[0].figure
                rows.append((scenario.name, shown, figure,
                             str((document.get("figures") or {}).get(figure)), "", "no target"))
    print(_table(rows))
    print(f"\nresults in {RESULTS.relative_to(REPO)}/", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
