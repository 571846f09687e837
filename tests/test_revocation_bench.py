"""bench/revoke.py runs end to end (small and bounded) and prints its side-by-side table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_revocation_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, "bench/revoke.py", "--keys", "30", "--time-limit", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:5]]
        for line in result.stdout.splitlines()
        if line.startswith("| ") and "measure" not in line
    }
    broker_last, peer_last, _ = rows["revoke -> last key refused (s)"]
    # Timing is the benchmark's business; the test checks that it measured both sides.
    assert float(broker_last) > 0
    assert float(peer_last) > 0
    assert rows["keys (broker) / child tokens (OpenBao)"][:2] == ["30", "30"]
