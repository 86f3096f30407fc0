"""``python -m bench soak`` runs the daemon under the mixed load and reports its samples (a smoke test:
counts and the shape of the report, no timing asserts)."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

SHORT = ["--minutes", "1", "--calls", "5", "--call-min", "4", "--call-max", "8", "--sample-seconds", "10",
         "--warmup-minutes", "0.3", "--patriot-every", "5", "--sms-every", "3"]


@pytest.mark.timeout(300)
def test_a_short_soak_reports_samples_and_loses_no_record(tmp_path):
    report = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "bench", "soak", *SHORT, "--workdir", str(tmp_path / "daemon"),
            "--json", str(report)]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, TMPDIR=str(tmp_path)), start_new_session=True)
    try:
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, err[-3000:]
    assert "| min | RSS MB |" in out and "RSS growth per completed call" in out, out

    result = json.loads(report.read_text())
    rows = result["rows"]
    assert len(rows) >= 4 and rows[-1]["label"] == "end"  # a sample every 10 s, and the final count
    final = rows[-1]
    assert final["completed"] > 0 and final["failed"] == 0
    assert final["patriot"] > 0
    assert final["tracebacks"] == 0, (tmp_path / "daemon" / "gateway.log").read_text()[-5000:]
    assert (final["cdrs"], final["provider_cdrs"]) == (final["cdrs_expected"], final["provider_expected"])
    assert final["sms_expected"] > 0 and final["sms"] == final["sms_expected"]
    assert all(row["rss"] > 0 and row["fds"] > 0 for row in rows)
    assert sum(row["echoes"] for row in rows) > 0
    assert result["exit_code"] == 0
    summary = result["summary"]
    assert summary["cdrs_missing"] == summary["provider_cdrs_missing"] == summary["sms_missing"] == 0
