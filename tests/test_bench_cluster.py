"""``python -m bench cluster`` runs every case at tiny sizes on the real engines (a smoke test: the
tables and their counts, no timing), and leaves no daemon or engine behind."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import uuid

from tests.engines import EngineMissing, _missing, postgres_bindir, redis_binary
from tests.test_bench_echo import _marked

ROOT = pathlib.Path(__file__).resolve().parent.parent
CALLS, PAIRS, BATCHES, SETUP_CALLS = 2, 2, 2, 10

TINY = [
    "--calls", str(CALLS), "--pairs", str(PAIRS), "--batches", str(BATCHES),
    "--setup-calls", str(SETUP_CALLS), "--setup-concurrency", "5", "--idle-seconds", "0.5",
    "--capacity-start", "5", "--capacity-step", "5", "--capacity-max", "10",
    "--capacity-seconds", "0.5", "--capacity-warmup", "0.3", "--capacity-tries", "1",
]


def test_every_case_reports_its_table(tmp_path):
    try:
        redis_binary()
        postgres_bindir()
    except EngineMissing as e:
        _missing(str(e))
    marker = uuid.uuid4().hex
    results = tmp_path / "cluster.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "cluster", *TINY, "--json", str(results)], cwd=ROOT,
        # not TMPDIR=tmp_path: PostgreSQL runs as another user when root, and cannot enter pytest's directories
        env=dict(os.environ, BENCH_TEST_MARKER=marker),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        report, err = process.communicate(timeout=85)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, f"{report}\n{err[-3000:]}"
    assert _marked(marker) == {}, "a daemon or an engine outlived the bench"
    for heading in ("### Command latency across nodes", "### Call setup cost", "### Workers"):
        assert heading in report, report
    assert "workers = 2 / workers = 1: " in report, report
    result = json.loads(results.read_text())

    latency = result["latency"]
    for side in ("via_b", "on_a"):
        counts = {action: latency[side][action]["count"] for action in ("hold", "retrieve", "hangup")}
        batch = {"hold": CALLS * PAIRS, "retrieve": CALLS * PAIRS, "hangup": CALLS}
        assert counts == {action: n * BATCHES for action, n in batch.items()}, (side, counts)
        assert latency[f"{side}_all"]["count"] == BATCHES * CALLS * (2 * PAIRS + 1)
    # every command sent to node b was routed to node a, and only those
    assert latency["routed"]["count"] == BATCHES * CALLS * (2 * PAIRS + 1)
    assert f"| hangup | b (routed to a), end to end | {BATCHES * CALLS} |" in report

    setup = result["setup"]
    assert list(setup) == ["one process, SQLite", "one process, PostgreSQL", "[cluster], SQLite",
                           "[cluster], PostgreSQL"]
    for name, row in setup.items():
        assert row["calls"] == SETUP_CALLS and row["cdrs"] >= SETUP_CALLS, (name, row)
        assert ("round_trips" in row) == name.startswith("[cluster]"), name
    for name in ("[cluster], SQLite", "[cluster], PostgreSQL"):
        # each call's events are published on its extension's channel, its record written by a script
        assert setup[name]["round_trips"]["publish"] > 0 and setup[name]["round_trips"]["evalsha"] > 0, setup[name]
        assert f"| {name} | {SETUP_CALLS} | " in report

    workers = result["workers"]
    assert set(workers) == {"1", "2"}
    for count, row in workers.items():
        assert "error" not in row, row
        assert row["steps"] and row["calls"] in (0, 5, 10), row
        assert f"| {count} | " in report
