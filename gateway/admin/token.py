"""Where the admin API's bearer token comes from when the configuration does not set one.

The gateway must never serve its API without a token, and an operator must
not have to invent one to get started: a token is generated once, kept in
``<state_dir>/admin-token`` (readable by the gateway's user only) and reused
on every start. The log says where the file is, never what is in it.
"""

from __future__ import annotations

import os
import pathlib
import secrets

from twisted.logger import Logger

from gateway.confschema import Secret
from gateway.store.files import narrow

__all__ = ["TOKEN_FILE", "resolve_token"]

log = Logger()

TOKEN_FILE = "admin-token"


def resolve_token(configured: Secret, state_dir: pathlib.Path) -> Secret:
    """The configured token if set; else the one in the state directory, generated there if missing."""
    if configured:
        return configured
    path = pathlib.Path(state_dir) / TOKEN_FILE
    token = _read(path)
    if token:
        log.info("admin API token read from {path}", path=str(path))
        return Secret(token)
    token = secrets.token_urlsafe(32)
    _write(path, token)
    log.info("admin API token generated and written to {path}", path=str(path))
    return Secret(token)


def _read(path: pathlib.Path) -> str:
    """The token in ``path`` ("" when the file is missing or blank); warns if others may read it."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return ""
    narrow(path)  # a token file others may read is made 0600 (logged)
    return text.strip()


def _write(path: pathlib.Path, token: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, 0o600)  # a blank file left by someone else may have had a wider mode
        f.write(token + "\n")
