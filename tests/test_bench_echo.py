"""``python -m bench optimaccs-echo`` runs every case against every server (a smoke test: counts and
shapes of the report, no timing), and leaves no server process behind, stopped or running, even when
it is interrupted in the middle of a stall."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVERS = ("gateway", "autobahn", "tcp")
STEP = 5

TINY = [
    "--calls", "5", "--seconds", "0.5", "--warmup", "0.3",
    "--stall-calls", "5", "--stall-ms", "100", "--stall-buckets", "2",
    "--capacity-start", "5", "--capacity-step", str(STEP), "--capacity-max", "10",
    "--capacity-seconds", "0.5", "--capacity-warmup", "0.3",
    "--idle-calls", "5", "--idle-rounds", "2",
]


def _environment(marker: str, tmp_path) -> dict:
    """The bench's environment: its temporary files under ``tmp_path``, and ``marker`` that every child inherits."""
    return dict(os.environ, BENCH_TEST_MARKER=marker, TMPDIR=str(tmp_path))


def _marked(marker: str) -> dict[int, str]:
    """The processes (pid -> state letter) whose environment holds ``marker``, zombies left out."""
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"BENCH_TEST_MARKER={marker}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            found[int(entry.name)] = state
    return found


def _rows(report: str, heading: str) -> dict[str, list[str]]:
    """The first table after ``### heading``: server -> its cells."""
    section = report.split(f"### {heading}\n", 1)[1]
    rows = {}
    for line in section.splitlines():
        if line.startswith("### "):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in SERVERS:
            rows.setdefault(cells[0], cells[1:])
        elif rows and not line.startswith("|"):
            break
    return rows


def _lost_of_sent(cell: str) -> tuple[int, int]:
    match = re.fullmatch(r"([\d,]+) of ([\d,]+)", cell)
    assert match, cell
    return tuple(int(group.replace(",", "")) for group in match.groups())


def test_every_case_reports_every_server(tmp_path):
    marker = uuid.uuid4().hex
    done = subprocess.run([sys.executable, "-m", "bench", "optimaccs-echo", *TINY], cwd=ROOT,
                          env=_environment(marker, tmp_path), capture_output=True, text=True, timeout=120)
    report = done.stdout
    assert done.returncode == 0, f"{report}\n{done.stderr[-3000:]}"
    assert report.startswith("Machine: ")

    steady = _rows(report, "Steady")
    assert set(steady) == set(SERVERS), report
    for cells in steady.values():
        lost, sent = _lost_of_sent(cells[6])
        assert sent > 0 and 0 <= lost <= sent

    stall = _rows(report, "Stall recovery")
    assert set(stall) == set(SERVERS), report
    for cells in stall.values():
        assert len(cells) == 2 + 2 + 2  # before, stall, two seconds after, recovered within, lost
        assert re.fullmatch(r"\d s|not within 2 s", cells[4]), cells
        lost, sent = _lost_of_sent(cells[5])
        assert sent > 0 and 0 <= lost <= sent

    capacity = _rows(report, "Capacity")
    assert set(capacity) == set(SERVERS), report
    for cells in capacity.values():
        calls = int(cells[0].lstrip("≥"))
        assert calls % STEP == 0 and 0 <= calls <= 10
        assert cells[2].startswith("5 ")  # the search starts at --capacity-start

    memory = _rows(report, "Memory per idle leg")
    assert set(memory) == set(SERVERS), report
    for cells in memory.values():
        float(cells[0])
        assert len(cells[1].split(", ")) == 2  # one figure per round

    assert _marked(marker) == {}, "a server process outlived the bench"


def test_an_interrupted_stall_leaves_no_process_behind(tmp_path):
    """SIGINT while the daemon is SIGSTOPped: the bench continues it and ends it before it exits."""
    marker = uuid.uuid4().hex
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "optimaccs-echo", "--cases", "stall", "--servers", "gateway",
         "--stall-calls", "3", "--warmup", "0.2", "--stall-ms", "60000"],
        cwd=ROOT, env=_environment(marker, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        stopped = None
        while stopped is None and time.monotonic() < deadline:
            line = bench.stderr.readline()
            if not line:
                break
            stopped = re.search(r"SIGSTOP (\d+)", line)
        assert stopped, "the stall never began"
        pid = int(stopped.group(1))
        time.sleep(0.2)
        assert _marked(marker).get(pid) == "T"  # the daemon is stopped now
        bench.send_signal(signal.SIGINT)
        bench.communicate(timeout=30)
        assert _marked(marker) == {}, "a server process outlived the interrupted bench"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
        for pid in _marked(marker):  # never leave a stray process to the next test
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
