"""The docs' commands, as a newcomer runs them from a fresh clone, so that they cannot rot.

Every fenced shell block of ``docs/*.md`` is read as a list of commands (backslash continuations
joined, here-documents kept with their command). Then:

- statically: the project's programs (``python``, ``twistd``, ``gatewayctl``) run from ``.venv/bin``
  or after the page's activate step; every ``$VARIABLE`` is set earlier on the page; ``twistd`` never
  leaves ``twistd.pid`` behind (``--pidfile=``); every file a command writes is one ``git`` ignores;
- every configuration the docs show (``toml`` blocks, and the files their commands write) loads with the
  gateway's own loader, placeholders of production-only values excepted by name;
- each page's walkthrough runs for real, in order, in an empty git work tree holding the checkout's
  ``.gitignore`` (and ``.venv``, linked): the simulators and the daemon start on free loopback ports
  (the page's ports mapped to them), the ``curl`` lines must succeed, the daemon stops cleanly on
  SIGTERM, and afterwards ``git`` sees no file the page's commands left behind.

``python -m gateway.sim --help`` must list every simulator with one line saying what it is.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import attrs
import pytest

from gateway.config import load, loads
from gateway.sim.__main__ import SIMULATORS
from gateway.testing import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
SHELL_LANGS = {"", "sh", "bash", "shell", "console"}
#: the fixed ports the docs use; a walkthrough maps each to a free one
DOC_PORTS = (4143, 8080, 8081, 8765, 9009, 9500)
#: the project's programs: from .venv/bin, or after the activate step
PROJECT_PROGRAMS = {"python", "python3", "twistd", "twist", "gatewayctl"}
#: commands the walkthrough does not run, and why (anything else unknown fails the test)
NOT_RUN = {
    "make": "the Makefile's targets have their own tests (make run is `twistd --nodaemon --pidfile= gateway`)",
    "hashpw-interactive": "asks for the password on a terminal; the --stdin form beside it runs",
    "placeholder": "names a value (<id>) that only an earlier answer gives",
}
#: values of the docs' production-only excerpts that cannot load on a test machine (and so may fail)
PLACEHOLDERS = ("/etc/gateway/", "scrypt$n=16384,r=8,p=1$...", "3A:5F:...:C2")
#: seconds a simulator or the daemon has to start listening
START_TIMEOUT = 30.0
#: seconds a shell command (curl...) may keep failing before it counts as failed: a person's typing pace
PERSON_PACE = 10.0
#: seconds ``optimaccs call`` has to place its calls, hang up and exit
CALLS_TIMEOUT = 60.0
#: seconds a client simulator that runs until Ctrl-C runs before it is stopped (it must not have failed on its options)
CLIENT_RUN = 2.0

pytestmark = pytest.mark.timeout(240)


# -- reading the docs ------------------------------------------------------------------------------


@attrs.frozen
class Block:
    page: pathlib.Path
    lang: str
    text: str
    line: int


@attrs.frozen
class Command:
    page: pathlib.Path
    line: int
    text: str  # the command line, continuations joined, the here-document excluded
    heredoc: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}: {self.text}"

    @property
    def words(self) -> list[str]:
        """The command's words, without a trailing ``&`` and comment (shell substitutions stay text)."""
        lexer = shlex.shlex(self.text, posix=True, punctuation_chars="&;|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        return words[:-1] if words[-1:] == ["&"] else words

    @property
    def program(self) -> str:
        words = self.words
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]) and len(words) > 1:
            words = words[1:]
        return words[0] if words else ""

    @property
    def background(self) -> bool:
        return self.text.split(" #")[0].rstrip().endswith("&")

    def sim(self) -> tuple[str, list[str]] | None:
        """(simulator, its arguments) for ``python -m gateway.sim NAME ...``."""
        words = self.words
        if (len(words) >= 4 and pathlib.PurePath(words[0]).name in ("python", "python3")
                and words[1:3] == ["-m", "gateway.sim"]):
            return words[3], words[4:]
        return None


def blocks(page: pathlib.Path) -> list[Block]:
    found = []
    lines = page.read_text("utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if match:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append(Block(page, match.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 2))
            i = end
        i += 1
    return found


def commands(page: pathlib.Path) -> list[Command]:
    found = []
    for block in blocks(page):
        if block.lang not in SHELL_LANGS:
            continue
        lines = block.text.splitlines()
        i = 0
        while i < len(lines):
            start, text = i, lines[i]
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            i += 1
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            heredoc = None
            marker = re.search(r"<<-?\s*'?(\w+)'?", text.split(" #")[0])
            if marker:
                end = next(j for j in range(i, len(lines)) if lines[j].strip() == marker.group(1))
                heredoc, i = "\n".join(lines[i:end]) + "\n", end + 1
            found.append(Command(page, block.line + start, text.strip(), heredoc))
    return found


def written_paths(command: Command) -> list[str]:
    """The files or directories a command writes (relative to the working directory)."""
    if kind(command) == "placeholder":
        return []
    words = command.words
    paths = re.findall(r"(?:^|\s)>>?\s*([^\s&;|]+)", command.text.split(" #")[0])
    paths += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--cert-out"]
    # directories: with a slash, as git matches a directory pattern ("/var/") only against one
    paths += [words[i + 1].rstrip("/") + "/" for i, w in enumerate(words[:-1]) if w == "--cert-dir"]
    if words and words[0] == "mkdir":
        paths += [w.rstrip("/") + "/" for w in words[1:] if not w.startswith("-")]
    return paths


def configs(page: pathlib.Path):
    """(where, TOML text) of every configuration the page shows: toml blocks and written .toml files."""
    for block in blocks(page):
        if block.lang == "toml":
            yield f"{page.name}:{block.line}", block.text
    for command in commands(page):
        if command.heredoc is not None and any(p.endswith(".toml") for p in written_paths(command)):
            yield command.where, command.heredoc


def every_command():
    return [c for page in PAGES for c in commands(page)]


def kind(command: Command) -> str:
    """What the walkthrough does with a command (see :func:`walk`)."""
    words, program = command.words, command.program
    if program in (".", "source"):
        return "activate"
    if re.search(r"<\w+>", command.text):
        return "placeholder"
    if command.sim() is not None:
        name, args = command.sim()
        if name in ("chat-server", "his-bridge", "patriot-server") or args[:1] == ["api"]:
            return "server"
        return "client"
    if pathlib.PurePath(program).name in ("twistd", "twist"):
        return "daemon"
    if "gateway.patriot.hashpw" in words:
        return "shell" if "--stdin" in words else "hashpw-interactive"
    if program == "kill":
        return "stop"
    if program in ("make",):
        return "make"
    if program in ("mkdir", "cat", "curl", "echo") or re.fullmatch(r"[A-Za-z_]\w*=.*", words[0] if words else ""):
        return "shell"
    return "unknown"


# -- static checks -----------------------------------------------------------------------------------


def test_the_docs_have_commands_to_check():
    assert PAGES, "no docs/*.md"
    assert sum(1 for c in every_command() if c.sim()) >= 6, [c.where for c in every_command()]
    assert sum(1 for c in every_command() if kind(c) == "daemon") >= 4


def test_every_command_is_one_the_walkthrough_knows():
    unknown = [c.where for c in every_command() if kind(c) == "unknown"]
    assert unknown == [], "teach tests/test_docs.py what to do with these, or write them differently"


def test_the_projects_programs_run_from_the_venv_or_after_the_activate_step():
    wrong = []
    for page in PAGES:
        activated = False
        for command in commands(page):
            if kind(command) == "activate":
                assert command.words[1:] == [".venv/bin/activate"], command.where
                activated = True
            program = command.program
            if program in PROJECT_PROGRAMS and not activated:
                wrong.append(command.where)
    assert wrong == [], "a fresh clone has these only in .venv/bin: write .venv/bin/X or `. .venv/bin/activate` first"


def test_every_variable_a_command_uses_is_set_earlier_on_its_page():
    unset = []
    for page in PAGES:
        assigned = set()
        for command in commands(page):
            for match in re.finditer(r"\$\{?([A-Za-z_]\w*)", command.text):
                if match.group(1) not in assigned | {"HOME", "PATH", "PWD"}:
                    unset.append(f"${match.group(1)} in {command.where}")
            assignment = re.match(r"([A-Za-z_]\w*)=", command.text)
            if assignment:
                assigned.add(assignment.group(1))
    assert unset == []


def test_twistd_in_the_docs_leaves_no_pidfile_in_the_checkout():
    lines = [c.where for c in every_command() if kind(c) == "daemon" and pathlib.PurePath(c.program).name == "twistd"]
    assert lines, "no twistd command found"
    assert [w for w in lines if "--pidfile=" not in w] == []


def _git(*args, cwd=ROOT, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check, timeout=30)


def _ignored(paths, cwd=ROOT) -> set[str]:
    """Which of ``paths`` git ignores in ``cwd``'s work tree."""
    result = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=cwd, input="\n".join(paths) + "\n",
                            capture_output=True, text=True, timeout=30)
    assert result.returncode in (0, 1), result.stderr
    return set(result.stdout.splitlines())


@pytest.fixture
def checkout():
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        pytest.skip("not a git checkout: the ignore rules are checked in one")
    return ROOT


def test_what_running_the_daemon_the_demo_and_the_tests_leaves_is_ignored(checkout):
    outputs = [
        "twistd.pid", "twistd.log", "twistd.log.1", "var/admin-token", "var/gateway.sqlite",
        "var/demo/gateway.toml", "var/demo/var/gateway.sqlite-wal", "_trial_temp/test.log",
        "_trial_temp.lock", "_trial_temp-1/test.log", "test-artifacts/status-page.png", ".pytest_cache/README.md",
        "gateway/__pycache__/x.cpython-311.pyc", "twisted/plugins/dropin.cache", "build/lib/x.py",
        "dist/telephony_gateway-1.0.tar.gz", "telephony_gateway.egg-info/PKG-INFO", ".venv/bin/python",
        ".coverage", "htmlcov/index.html",
    ]
    assert sorted(set(outputs) - _ignored(outputs)) == []


def test_every_file_the_docs_write_is_ignored(checkout):
    written = {p: c.where for c in every_command() for p in written_paths(c)}
    assert written, "the docs write no file?"
    assert {p: w for p, w in written.items() if p not in _ignored(list(written))} == {}


# -- configurations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_configuration_the_docs_show_loads(page):
    for where, text in configs(page):
        try:
            loads(text, where)
        except Exception as e:
            assert any(p in text for p in PLACEHOLDERS), f"{where}: {e}"


def test_the_configurations_the_walkthroughs_run_are_shown_in_full():
    written = [w for page in PAGES for w, _ in configs(page) if ".md:" in w and " " in w]
    assert len(written) >= 4, written


# -- the simulators' command line --------------------------------------------------------------------


def _run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def test_gateway_sim_help_lists_every_simulator_with_one_line():
    result = _run([sys.executable, "-m", "gateway.sim", "--help"])
    assert result.returncode == 0, result.stderr
    for name in SIMULATORS:
        (line,) = [line for line in result.stdout.splitlines() if line.split()[:1] == [name]]
        assert len(line.split()) > 4, f"{name} has no description: {line!r}"


def test_every_simulator_command_in_the_docs_takes_the_options_it_is_given():
    for command in every_command():
        if command.sim() is None:
            continue
        name, args = command.sim()
        assert name in SIMULATORS, command.where
        sub = args[:1] if args and not args[0].startswith("-") else []
        result = _run([sys.executable, "-m", "gateway.sim", name, *sub, "--help"])
        assert result.returncode == 0, f"{command.where}\n{result.stderr}"
        for option in (a.split("=")[0] for a in args if a.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.stdout), \
                f"{command.where}: {option} is not an option of {name} {' '.join(sub)}"


# -- the walkthroughs --------------------------------------------------------------------------------


def _connectable(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _until(check, what, proc, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"{what}: exited with {proc.returncode} before it was up:\n{_output(proc)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not up within {timeout:g} s:\n{_output(proc)}")
        time.sleep(0.1)


def _output(proc) -> str:
    proc.log.flush()
    return pathlib.Path(proc.log.name).read_text(errors="replace")[-4000:]


class Walk:
    """One page's commands, run in order in ``workdir`` (see the module docstring)."""

    def __init__(self, page: pathlib.Path, workdir: pathlib.Path, logs: pathlib.Path):
        self.page = page
        self.workdir = workdir
        self.logs = logs
        self.ports = {port: free_port() for port in DOC_PORTS}
        self.prelude: list[str] = []  # the activate step and variables, for every later command
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ)
        venv_bin = str(pathlib.Path(sys.prefix) / "bin")
        self.env["PATH"] = os.pathsep.join(p for p in self.env["PATH"].split(os.pathsep) if p != venv_bin)
        self.env.pop("VIRTUAL_ENV", None)

    def mapped(self, text: str) -> str:
        for doc_port, port in self.ports.items():
            text = re.sub(rf"(?<![\d.]){doc_port}(?!\d)", str(port), text)
        return text

    def script(self, command: Command, *, exec_=False) -> str:
        text = self.mapped(command.text)
        if command.background:
            text = text.split(" #")[0].rstrip()[:-1]
        if exec_:
            text = "exec " + text
        if command.heredoc is not None:
            text += "\n" + self.mapped(command.heredoc) + re.search(r"<<-?\s*'?(\w+)'?", command.text).group(1)
        return "\n".join([*self.prelude, text]) + "\n"

    def spawn(self, command: Command) -> subprocess.Popen:
        log = open(self.logs / f"{len(self.procs)}.log", "w+")
        proc = subprocess.Popen(["bash", "-c", self.script(command, exec_=True)], cwd=self.workdir, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log = log
        self.procs.append(proc)
        return proc

    def shell(self, command: Command) -> None:
        text = self.script(command)
        if command.program == "curl":
            text = text.replace("curl ", "curl -sS --fail-with-body --max-time 20 ", 1)
        deadline = time.monotonic() + PERSON_PACE
        while True:  # what a person types next may come a little after the gateway's answer
            result = subprocess.run(["bash", "-c", text], cwd=self.workdir, env=self.env, capture_output=True,
                                    text=True, timeout=60, stdin=subprocess.DEVNULL)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert result.returncode == 0, f"{command.where}\n{result.stdout}\n{result.stderr}"
        if re.match(r"[A-Za-z_]\w*=", command.text):
            self.prelude.append(self.mapped(command.text))

    def server(self, command: Command) -> None:
        _, args = command.sim()
        port = int(self.mapped(args[args.index("--port") + 1]))
        _until(lambda: _connectable(port), command.where, self.spawn(command))

    def client(self, command: Command) -> None:
        proc = self.spawn(command)
        if command.sim()[1][:1] == ["call"] and not command.background:
            # it places its calls, hangs up and exits: 0 only if every call kept to the protocol
            try:
                proc.wait(CALLS_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{command.where}: still running after {CALLS_TIMEOUT:g} s\n{_output(proc)}")
            assert proc.returncode == 0, f"{command.where}\n{_output(proc)}"
            return
        try:  # it runs until Ctrl-C: it must not have given up on its options
            proc.wait(CLIENT_RUN)
        except subprocess.TimeoutExpired:
            return
        output = _output(proc)
        assert proc.returncode != 2 and "usage:" not in output, f"{command.where}\n{output}"

    def daemon(self, command: Command) -> None:
        words = command.words
        config = load(str(self.workdir / words[words.index("--config") + 1]))  # the file the page wrote
        admin = int(re.search(r"tcp:(\d+)", config.admin.listen).group(1))
        self.daemon_proc = self.spawn(command)
        _until(lambda: _healthy(admin), command.where, self.daemon_proc)

    def stop(self) -> None:
        """Everything started, newest first: SIGTERM, then SIGKILL after 20 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            proc.log.close()

    def run(self) -> None:
        for command in commands(self.page):
            what = kind(command)
            if what == "activate":
                self.prelude.append(command.text)
            elif what in ("shell", "server", "client", "daemon"):
                getattr(self, what)(command)
            elif what == "stop":
                daemon = getattr(self, "daemon_proc", None)
                self.stop()
                if daemon is not None:
                    assert daemon.returncode == 0, f"{command.where}: the daemon exited {daemon.returncode}:\n" \
                                                   f"{_output(daemon)}"
            else:
                assert what in NOT_RUN, command.where


@pytest.mark.parametrize("page", [p for p in PAGES if any(kind(c) == "daemon" for c in commands(p))],
                         ids=lambda p: p.name)
def test_the_pages_walkthrough_runs_and_leaves_nothing_for_git(page, tmp_path):
    if shutil.which("git") is None or shutil.which("curl") is None:
        pytest.fail("git and curl are needed (a newcomer has them; the docs use curl)")
    workdir, logs = tmp_path / "clone", tmp_path / "logs"
    workdir.mkdir()
    logs.mkdir()
    _git("init", "-q", cwd=workdir)
    shutil.copy(ROOT / ".gitignore", workdir / ".gitignore")
    (workdir / ".venv").symlink_to(sys.prefix)  # a link, which /.venv/ (a directory) does not match:
    (workdir / ".git" / "info" / "exclude").write_text("/.venv\n")
    walk = Walk(page, workdir, logs)
    try:
        walk.run()
    finally:
        walk.stop()
    assert [c for c in commands(page) if kind(c) == "stop"], f"{page.name}: nothing stops what it started"
    left = _git("ls-files", "--others", "--exclude-standard", cwd=workdir).stdout.split()
    assert [p for p in left if p != ".gitignore"] == [], f"{page.name}'s commands left these for git status"


# -- the benchmark page's claims ---------------------------------------------------------------------

BENCH = ROOT / "bench" / "README.md"


def _section(title: str) -> str:
    """One ``## title`` section of the benchmark page, up to the next ``## `` heading."""
    return BENCH.read_text("utf-8").split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _tables(section: str) -> list[dict[str, list[str]]]:
    """A section's tables: first cell -> its row's cells (header and rule rows left out)."""
    tables = []
    for table in re.findall(r"((?:^\|.*\|\n)+)", section, re.MULTILINE):
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
        tables.append({row[0]: row for row in rows[2:]})
    return tables


def _echo_tables() -> list[dict[str, list[str]]]:
    """The OptimaCCS echo section's tables (steady, stall p99, stall p50, capacity, memory), from one run."""
    return _tables(_section("OptimaCCS echo"))


def test_the_benchmark_ratios_are_the_tables_own_numbers_divided():
    steady, _, _, capacity, _ = _echo_tables()
    assert set(steady) == set(capacity) == {"gateway", "autobahn", "tcp"}
    cpu = {server: float(row[1]) for server, row in steady.items()}
    for server, row in steady.items():
        assert float(row[2]) == round(cpu[server] / cpu["autobahn"], 2), row
        assert float(row[3]) == round(cpu[server] / cpu["tcp"], 2), row
    calls = {server: float(row[1].lstrip("≥")) for server, row in capacity.items()}
    for server, row in capacity.items():
        assert float(row[2]) == round(calls[server] / calls["autobahn"], 2), row


def test_the_benchmark_pages_make_no_claim_their_tables_do_not_show():
    """A ratio stated in the echo section's prose is one its own tables show; and neither page claims a
    number of calls per core or that nothing is ever dropped."""
    section = _section("OptimaCCS echo")
    steady, _, _, capacity, _ = _tables(section)
    ratios = {cell for row in steady.values() for cell in row[2:4]} | {row[2] for row in capacity.values()}
    prose = " ".join(re.sub(r"^\|.*\|$", "", section, flags=re.MULTILINE).split())
    own = [s for s in re.split(r"(?<=[.:]) ", prose) if "independent" not in s]  # not another run's figures
    stated = {m for s in own for m in re.findall(r"(\d+\.\d+)x", s)}
    assert stated <= ratios, f"ratios the tables do not show: {stated - ratios}"
    for text in (BENCH.read_text("utf-8"), (ROOT / "README.md").read_text("utf-8")):
        flat = " ".join(text.split())
        for claim in (r"calls per core", r"nothing is dropped", r"plan for \d+",
                      r"on the order of [\d,-]+ bridged calls"):
            assert not re.search(claim, flat, re.IGNORECASE), claim
