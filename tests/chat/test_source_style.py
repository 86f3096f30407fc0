"""House style of the chat and CTI adapters' sources: lines of at most 120 characters, imports in order.

Imports: ``__future__``, then the standard library, then third-party packages, then ``gateway``, each
group with ``import x`` before ``from x import y`` and sorted by module name.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "gateway"
SOURCES = sorted([*(GATEWAY / "chat").glob("*.py"), *(GATEWAY / "cti").glob("*.py"),
                  GATEWAY / "boundary.py", GATEWAY / "linkwatch.py", GATEWAY / "tlspolicy.py"])


def _group(module: str) -> int:
    top = module.split(".")[0]
    if top == "__future__":
        return 0
    if top in sys.stdlib_module_names:
        return 1
    return 3 if top == "gateway" else 2


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lines_are_at_most_120_characters(path):
    long = [n for n, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 120]
    assert long == [], f"{path.name}: lines over 120 characters: {long}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_are_in_order(path):
    tree = ast.parse(path.read_text())
    keys = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            keys.append((_group(node.names[0].name), 0, node.names[0].name.lower(), node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            keys.append((_group(node.module), 1, node.module.lower(), node.lineno))
    out_of_order = [b[3] for a, b in zip(keys, keys[1:]) if b[:3] < a[:3]]
    assert out_of_order == [], f"{path.name}: imports out of order at lines {out_of_order}"
