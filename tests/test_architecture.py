"""The house rules that keep the rooms apart, checked on the source."""

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ADAPTER_ROOMS = ("gateway.admin", "gateway.drivers", "gateway.patriot", "gateway.cti", "gateway.chat",
                 "gateway.store", "gateway.sim", "gateway.tap", "gateway.callservice")


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _library_modules():
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        if "sim" in path.relative_to(ROOT).parts or path.name in ("__main__.py", "demo.py", "ctl.py", "testing.py"):
            continue
        yield path


@pytest.mark.parametrize("path", sorted((ROOT / "gateway" / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_adapter_no_socket(path):
    bad = [name for name in _imports(path)
           if name.startswith(ADAPTER_ROOMS) or name in ("socket", "twisted.internet.reactor")]
    assert bad == []


def test_library_code_never_imports_the_global_reactor_at_module_level():
    offenders = []
    for path in _library_modules():
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if "twisted.internet.reactor" in names:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def _sim_imports(path):
    """Every module ``path`` imports, relative imports resolved against ``gateway.sim``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = "gateway.sim".split(".")[: 3 - node.level] if node.level <= 2 else []
                base = ".".join([*package, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("path", sorted((ROOT / "gateway" / "sim").glob("*.py")), ids=lambda p: p.name)
def test_the_simulators_share_no_wire_code_with_the_adapters(path):
    """A simulator encodes and decodes its peer's wire itself, from the spec (issue 13, item 7):
    from the gateway it may import only ``gateway.sim``, so a wire mistake shared by an adapter and
    its simulator cannot pass unseen."""
    bad = sorted({name for name in _sim_imports(path)
                  if (name == "gateway" or name.startswith("gateway.")) and not
                  (name == "gateway.sim" or name.startswith("gateway.sim."))})
    assert bad == []


#: the rooms that reach the call core through its one door, ICallControl (drivers: IInboundCalls)
CALL_CONTROL_CLIENTS = ("gateway/admin", "gateway/cti", "gateway/patriot", "gateway/chat", "gateway/drivers")
#: what of the core they may import: its neutral modules, never the registry or its machinery
CORE_NEUTRAL = ("gateway.core", "gateway.core.dtmf", "gateway.core.errors", "gateway.core.events",
                "gateway.core.interfaces", "gateway.core.model", "gateway.core.states")


def _core_imports(path):
    """The ``gateway.core`` modules ``path`` imports (a name imported from a module counts as that module)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
            if node.module == "gateway.core":  # from gateway.core import registry
                names = [f"gateway.core.{alias.name}" for alias in node.names
                         if f"gateway.core.{alias.name}" not in _CORE_NAMES_IN_PACKAGE]
                names = names or ["gateway.core"]
        else:
            continue
        yield from (name for name in names if name == "gateway.core" or name.startswith("gateway.core."))


#: names ``gateway.core`` itself exports (classes, not modules)
_CORE_NAMES_IN_PACKAGE = {f"gateway.core.{name}" for name in importlib.import_module("gateway.core").__all__}


@pytest.mark.parametrize(
    "path",
    sorted(path for room in CALL_CONTROL_CLIENTS for path in (ROOT / room).rglob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_adapters_reach_the_core_through_icallcontrol_only(path):
    """Every adapter holds an ICallControl (drivers an IInboundCalls) and imports nothing from
    ``gateway.core.registry`` nor the core's other machinery (issue 13, item 1): only the neutral
    modules, where the errors, events, states, snapshots, interfaces and DTMF limits live."""
    bad = sorted({name for name in _core_imports(path) if name not in CORE_NEUTRAL})
    assert bad == []


#: the daemon's assembly: where the parts are built and wired (issue 13, item 3)
ASSEMBLY = [ROOT / "gateway" / "tap.py", ROOT / "gateway" / "callservice.py", ROOT / "gateway" / "context.py",
            *sorted((ROOT / "plugins").glob("*.py"))]


@pytest.mark.parametrize("path", ASSEMBLY, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_assembly_has_no_late_binding_lambdas(path):
    """A part gets the parts it needs when it is built or in the one wiring step (``CoreService.wire``),
    never as a ``lambda: ctx.something`` read later."""
    late = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Lambda) and not node.args.args:
            reads = [n for n in ast.walk(node.body) if isinstance(n, ast.Attribute)
                     and isinstance(n.value, ast.Name) and n.value.id == "ctx"]
            if reads:
                late.append(f"line {node.lineno}: lambda: ctx.{reads[0].attr}")
    assert late == []


@pytest.mark.parametrize("path", sorted((ROOT / "gateway" / "core").glob("*.py")), ids=lambda p: p.name)
def test_no_part_of_the_core_plugs_its_callbacks_into_another(path):
    """No ``other.attribute = self._method``: a part is handed who to tell in an explicit ``wire``
    step by whoever assembles the core, instead of assigning its callbacks onto another part."""
    plugged = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Attribute) and not (isinstance(target.value, ast.Name)
                                                              and target.value.id == "self")
                        and isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
                        and node.value.value.id == "self"):
                    plugged.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert plugged == []


def test_the_context_is_typed():
    """The shared services every room is handed are typed: no ``Any`` for the store, the call core
    (its ICallControl) and the admin API router."""
    import attrs

    from gateway.context import Context

    types = {field.name: field.type for field in attrs.fields(Context)}
    assert types["store"] == "ICdrStore | None"
    assert types["registry"] == "ICallControl | None"
    assert types["api"] == "ApiRouter | None"
    assert not [name for name, tp in types.items() if name != "reactor" and "Any" in str(tp)]
