"""Files the daemon creates are its own: mode 0600 (directories 0700), whatever the umask.

The state directory holds the CDR database, the generated admin token, chat transcripts and
recordings: customers' numbers, messages and voices. :func:`create_private` makes a file with mode
0600 and narrows one that exists wider (saying so in the log); :func:`check_private_dir` warns at
start when the state directory itself is open to other users. The daemon also runs with umask 0077
(:func:`gateway.tap.makeService`), so what a library writes on its own is private too.
"""

from __future__ import annotations

import os
import pathlib
import stat

from twisted.logger import Logger

__all__ = ["DIR_MODE", "FILE_MODE", "check_private_dir", "create_private", "narrow", "write_private"]

log = Logger()

FILE_MODE = 0o600
DIR_MODE = 0o700


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def narrow(path: pathlib.Path, mode: int = FILE_MODE) -> None:
    """Take away what ``mode`` does not allow from an existing ``path`` (logged); nothing if it is missing."""
    try:
        current = _mode(path)
    except FileNotFoundError:
        return
    if current & ~mode:
        try:
            os.chmod(path, current & mode)
        except OSError as e:
            log.warn("{path} is mode {old:04o}, open to other users, and could not be narrowed: {error}",
                     path=str(path), old=current, error=e.strerror or str(e))
            return
        log.warn("{path} was mode {old:04o}, open to other users: narrowed to {new:04o}",
                 path=str(path), old=current, new=current & mode)


def create_private(path: pathlib.Path) -> None:
    """Make sure ``path`` exists as a file of mode 0600 (created empty if missing; narrowed if wider)."""
    path = pathlib.Path(path)
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        narrow(path)
        return
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away, never added: this is exact
    finally:
        os.close(fd)


def write_private(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a ``.part`` file renamed over it), mode 0600."""
    path = pathlib.Path(path)
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, FILE_MODE)  # a .part left by someone else may have had a wider mode
        f.write(data)
    os.replace(temporary, path)


def check_private_dir(path: pathlib.Path) -> bool:
    """Warn (naming the directory and its mode) when ``path`` is open to other users; True if it is private."""
    path = pathlib.Path(path)
    mode = _mode(path)
    if mode & 0o077:
        log.warn(
            "the state directory {path} is mode {mode:04o}: other users may read or enter it "
            "(CDRs, SMS, the admin token live there); chmod 700 it",
            path=str(path.absolute()), mode=mode,
        )
        return False
    return True
