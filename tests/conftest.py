"""Shared pytest configuration: temporary paths, the artefact directory, the protocol texts, and the
teardown of what a test started (``cleanup``, ``processes``)."""
import itertools
import pathlib

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The real Redis and PostgreSQL fixtures (redis_server, postgres_server): see tests/engines.py.
pytest_plugins = ["tests.engines"]


@pytest.fixture
def artifacts_dir():
    """A directory whose contents are kept after the run (screenshots, logs)."""
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def shared_protocols():
    """The peer protocol specifications beside the checkout (../shared/protocols)."""
    path = ROOT.parent / "shared" / "protocols"
    if not path.is_dir():
        pytest.skip(f"shared protocol texts not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _trial_mktemp_under_tmp_path(monkeypatch, tmp_path):
    """Trial's ``mktemp()`` makes paths below the working directory (the checkout);
    under pytest they go below the test's ``tmp_path``, which pytest cleans up."""
    counter = itertools.count()
    monkeypatch.setattr(SynchronousTestCase, "mktemp", lambda self: str(tmp_path / f"mktemp-{next(counter)}"))


@pytest.fixture
def cleanup():
    """``cleanup(stop)`` registers something the test started; at teardown every ``stop()`` runs,
    the last registered first."""
    stops = []
    yield stops.append
    for stop in reversed(stops):
        stop()


@pytest.fixture
def processes(cleanup):
    """The GatewayProcesses a test appends here are killed at teardown (if still running) and waited for."""
    made = []

    def kill_all():
        for proc in made:
            proc.kill()
        pytest_twisted.blockon(defer.DeferredList([proc.ended for proc in made if proc.transport is not None]))

    cleanup(kill_all)
    return made
