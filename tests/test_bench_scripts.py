"""The benchmark scripts still run: each on tiny settings, as a subprocess, as a user runs them.

Their figures are not asserted (speed is measured in scripts/, not in timed tests); that they
run to the end and print their ratios is. scripts/bench_overhead.py once broke silently when
Trainer.train_step gained an argument its wrapper did not pass on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def script(name: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "2", "COLUMNS": "120"})


def test_bench_overhead_runs_and_prints_its_ratios(tmp_path):
    out = tmp_path / "overhead.json"
    result = script("bench_overhead.py", "--samples", "1024", "--epochs", "1", "--repeats", "1", "--json", str(out),
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ratios = [float(r) for r in re.findall(r"ratio dlrun/plain: ([0-9.]+)", result.stdout)]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    table = json.loads(out.read_text())
    assert abs(table["ratio"] - ratios[1]) < 1e-3  # the whole-loop ratio, as printed (3 decimals)


def test_bench_data_runs_and_prints_its_ratio(tmp_path):
    result = script("bench_data.py", "--device", "cpu", "--samples", "1024", "--workers", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(re.search(r"ratio dlrun / DataLoader:\s+([0-9.]+)x", result.stdout).group(1)) > 0
