"""Salted password hashes for ``[[patriot.bridge.users]]``, and the command that makes one.

A bridge user's ``password`` is either the plain password or a hash made here::

    $ python -m gateway.patriot.hashpw
    Password:
    Again:
    scrypt$n=16384,r=8,p=1$k3bq...$Yw0...

The hash is scrypt (stdlib :func:`hashlib.scrypt`) over a random 16-byte salt, written as
``scrypt$n=N,r=R,p=P$<salt, base64>$<key, base64>`` so that the cost can be raised later without
invalidating stored hashes. :func:`verify_password` compares in constant time.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys

import attrs

#: what every stored hash starts with
PREFIX = "scrypt$"

#: the cost of new hashes (about 16 MiB of memory and a few tens of milliseconds)
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2**14, 8, 1

_SALT_BYTES = 16
_KEY_BYTES = 32
#: scrypt needs 128 * n * r bytes; allow well above the default cost, refuse absurd values
_MAX_MEMORY = 256 * 1024 * 1024


@attrs.frozen
class PasswordHash:
    """A parsed ``scrypt$...`` hash."""

    n: int
    r: int
    p: int
    salt: bytes = attrs.field(repr=False)
    key: bytes = attrs.field(repr=False)

    def derive(self, password: str) -> bytes:
        return _scrypt(password, self.salt, self.n, self.r, self.p, len(self.key))

    def __str__(self) -> str:
        salt, key = (base64.b64encode(b).decode("ascii") for b in (self.salt, self.key))
        return f"{PREFIX}n={self.n},r={self.r},p={self.p}${salt}${key}"


def _bytes(text: str) -> bytes:
    """``text`` as UTF-8, a lone surrogate included (``surrogatepass``).

    Never raises, and two different texts are never the same bytes.
    """
    return text.encode("utf-8", "surrogatepass")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        _bytes(password), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_MAX_MEMORY + 1024 * 1024
    )


def is_hash(stored: str) -> bool:
    """Whether a configured password is a hash (else it is the plain password)."""
    return stored.startswith(PREFIX)


def parse_hash(stored: str) -> PasswordHash:
    """Read a ``scrypt$...`` hash, or raise ``ValueError`` saying what is wrong with it."""
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != PREFIX[:-1]:
        raise ValueError("a password hash reads scrypt$n=N,r=R,p=P$SALT$KEY (make one with python -m gateway.patriot.hashpw)")
    try:
        params = dict(item.split("=", 1) for item in parts[1].split(","))
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
        salt = base64.b64decode(parts[2], validate=True)
        key = base64.b64decode(parts[3], validate=True)
    except (ValueError, KeyError, binascii.Error):
        raise ValueError("password hash: cannot read its parameters, salt or key") from None
    if set(params) != {"n", "r", "p"} or n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r > _MAX_MEMORY:
        raise ValueError(f"password hash: unusable scrypt parameters {parts[1]!r}")
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("password hash: salt or key too short")
    return PasswordHash(n, r, p, salt, key)


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P,
                  salt: bytes | None = None) -> str:
    """A new ``scrypt$...`` hash of ``password`` (with a fresh random salt unless ``salt`` is given)."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    return str(PasswordHash(n, r, p, salt, _scrypt(password, salt, n, r, p, _KEY_BYTES)))


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a hash, or a plain password), in constant time.

    Any ``str`` may be given (one holding a lone surrogate simply does not match); only a stored
    hash that cannot be read raises ``ValueError``.
    """
    if is_hash(stored):
        expected = parse_hash(stored)
        return hmac.compare_digest(expected.derive(password), expected.key)
    return hmac.compare_digest(_bytes(password), _bytes(stored))


def main(argv=None, *, read_password=getpass.getpass, out=sys.stdout) -> int:
    """Ask for a password twice (or read one line from stdin with ``--stdin``) and print its hash."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.patriot.hashpw",
        description="Print a salted hash of a password, for password = ... in [[patriot.bridge.users]].",
    )
    parser.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    args = parser.parse_args(argv)
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = read_password("Password: ")
        if read_password("Again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("refusing an empty password", file=sys.stderr)
        return 1
    print(hash_password(password), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
