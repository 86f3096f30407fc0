"""Shared pytest configuration: artefact directory for tests that keep files."""
import os
import pathlib

import pytest

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
