"""Shared pytest configuration: temporary paths, the artefact directory, the protocol texts."""
import itertools
import pathlib

import pytest
from twisted.trial.unittest import SynchronousTestCase

ROOT = pathlib.Path(__file__).resolve().parent.parent


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
