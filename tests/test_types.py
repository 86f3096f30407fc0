"""mypy over the core, the media plane and the plug points, as ``make test`` runs it.

The scope and the strictness are the ``[mypy]`` section of ``setup.cfg`` (``strict``, with the
zope plugin so interfaces are types and an implementer's methods are checked against its
interfaces). This test runs that, and holds the section to what CONTRIBUTING.md promises, so
narrowing the scope or dropping ``strict`` fails here too. mypy's cache is ``.mypy_cache``
(ignored by git); a cold run takes a few seconds.
"""

from __future__ import annotations

import configparser
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: what must stay type-checked (CONTRIBUTING.md, "Types")
SCOPE = {"gateway/media", "gateway/adapters.py", *(f"gateway/core/{name}.py" for name in (
    "__init__", "cdr", "dtmf", "errors", "events", "interfaces", "mediactl", "metrics", "model", "registry",
    "routing", "states", "testing"))}
#: seconds a cold run may take on the 2-core CI machine before something is wrong
TIMEOUT = 100


def _config() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def test_the_mypy_config_keeps_its_scope_and_strictness() -> None:
    parser = _config()
    config = parser["mypy"]
    files = {name.strip() for name in config["files"].split(",")}
    assert SCOPE <= files
    assert config.getboolean("strict")
    assert "mypy_zope:plugin" in config["plugins"]
    assert not config.getboolean("ignore_missing_imports", fallback=False)
    # no module of ours is let off
    for section in parser.sections():
        if section.startswith("mypy-gateway"):
            module = parser[section]
            assert not module.getboolean("ignore_errors", fallback=False), f"[{section}] ignore_errors"
            for check in ("disallow_untyped_defs", "disallow_incomplete_defs", "check_untyped_defs"):
                assert module.getboolean(check, fallback=True), f"[{section}] {check} = False"


def test_mypy_is_green() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, f"mypy found problems (config: [mypy] in setup.cfg):\n{output}"
    assert "Success: no issues found" in result.stdout
