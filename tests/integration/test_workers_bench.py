"""``python -m bench optimaccs-echo --workers 2`` measures a multi-worker daemon and leaves no process behind."""

import os
import pathlib
import subprocess
import sys
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.timeout(180)


def _marked(marker):
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"BENCH_TEST_MARKER={marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                if (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_the_echo_bench_runs_against_two_workers(tmp_path):
    marker = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-m", "bench", "optimaccs-echo", "--servers", "gateway", "--workers", "2",
         "--cases", "steady,stall", "--calls", "10", "--seconds", "0.5", "--warmup", "0.3",
         "--stall-calls", "5", "--stall-ms", "100", "--stall-buckets", "2"],
        cwd=ROOT, env=dict(os.environ, BENCH_TEST_MARKER=marker, TMPDIR=str(tmp_path)),
        capture_output=True, text=True, timeout=150)
    report = done.stdout
    assert done.returncode == 0, f"{report}\n{done.stderr[-3000:]}"
    assert "Gateway: [gateway] workers = 2 (the parent and its workers measured together)" in report
    steady = report.split("### Steady\n", 1)[1]
    row = next(line for line in steady.splitlines() if line.startswith("| gateway |"))
    assert "error" not in row and " of " in row, row
    stall = report.split("### Stall recovery\n", 1)[1]
    row = next(line for line in stall.splitlines() if line.startswith("| gateway |"))
    assert "error" not in row, row
    assert _marked(marker) == [], "a gateway process outlived the bench"
