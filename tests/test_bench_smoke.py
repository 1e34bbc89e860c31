"""The benchmark harness keeps working: `bench/run.py --quick` runs one scenario (the
transparency log's proofs, a few seconds), prints the table against its target, and keeps the
result in the results folder. The benchmarks themselves are not part of the test suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_quick_mode_of_one_scenario_runs_checks_itself_and_keeps_its_result(
        tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    shutil.copytree(REPO / "bench", bench, ignore=shutil.ignore_patterns("results", "__pycache__"))
    process = subprocess.run(
        [sys.executable, str(bench / "run.py"), "--quick", "log-proof"], capture_output=True,
        text=True, timeout=120, check=False, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(bench), str(REPO)])))
    assert process.returncode == 0, process.stdout + process.stderr
    header, rule, row = process.stdout.splitlines()[:3]
    assert header.split()[:3] == ["scenario", "parameters", "figure"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert row.startswith("log-proof") and "inclusion_proof_cpu_us" in row
    [kept] = json.loads((bench / "results" / "log-proof.json").read_text())
    assert kept["failure"] is None
    assert kept["figures"]["proofs_verified"] > 0           # it checked its own output
    assert kept["figures"]["inclusion_proof_cpu_us"] > 0
    assert kept["machine"]["cores"] and kept["machine"]["libraries"]["PyNaCl"]
    assert kept["parameters"]["blocks"] == 20_000


def test_an_unknown_scenario_is_refused_naming_the_known_ones() -> None:
    process = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "nonsense"],
                             capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert process.returncode == 2
    assert "unknown scenario(s) nonsense; known: collector" in process.stderr
