"""Packaging: twistd finds the plugin in the editable install and in an installed wheel."""

import configparser
import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def _listed_packages():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return set(cfg["options"]["packages"].split())


def test_every_package_directory_is_listed_in_setup_cfg():
    found = {
        ".".join(p.relative_to(ROOT).parts[:-1])
        for p in (ROOT / "gateway").rglob("__init__.py")
        if "plugins" not in p.parts and "etc" not in p.parts
    }
    missing = found - _listed_packages()
    assert not missing, f"add these to [options] packages in setup.cfg: {sorted(missing)}"


def test_twisted_plugins_is_a_namespace_without_init():
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert "twisted.plugins" in _listed_packages()


def test_plugin_file_imports_nothing_heavy():
    source = (ROOT / "twisted" / "plugins" / "gateway_plugin.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["from twisted.application.service import ServiceMaker"]


def test_editable_install_lists_the_plugin(tmp_path):
    out = subprocess.run(
        [str(BIN / "twistd"), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert any(line.split()[:1] == ["gateway"] for line in out.stdout.splitlines()), out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (path,) = outdir.glob("*.whl")
    return path


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/gateway_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert "gateway/etc/gateway.toml" in names
    assert "gateway/plugins/__init__.py" in names
    assert {f"gateway/admin/static/status.{ext}" for ext in ("html", "js", "css")} <= names
    assert not any(n.startswith(("plugins/", "etc/", "tests/")) for n in names), "top-level folders leaked"


def test_wheel_installed_into_a_scratch_venv_runs_twistd_gateway(wheel, tmp_path):
    """A fresh venv that sees this venv's dependencies but not the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    # The dependencies come from the test venv, through a plain path entry (which,
    # unlike a site directory, does not run the checkout's editable .pth hook).
    (pathlib.Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [str(python), "-c", "import gateway, gateway.plugins; print(gateway.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(site), f"gateway imported from {where.stdout}, not the wheel"

    def twistd(*args):
        script = f"import sys; from twisted.scripts.twistd import run; sys.argv=['twistd', *{list(args)!r}]; run()"
        done = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert any(line.split()[:1] == ["gateway"] for line in twistd("--help").splitlines()), "twistd lists no gateway"
    assert "--config" in twistd("gateway", "--help")
    top = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('plugins'))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert top.stdout.strip() == "None", "a top-level 'plugins' package was installed"


def _sim_top_level_imports():
    """path -> the top-level modules outside the stdlib and the gateway that a simulator imports (anywhere in it)."""
    import ast

    found = {}
    for path in sorted((ROOT / "gateway" / "sim").glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[path.name] = names - set(sys.stdlib_module_names) - {"gateway", "__future__"}
    return found


def _installed_closure(requirements):
    """The distributions (canonical names) the requirement strings pull in, as installed in this venv."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted = [(Requirement(text), ("",)) for text in requirements]
    seen = set()
    while wanted:
        requirement, in_extras = wanted.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in in_extras
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            wanted.append((Requirement(text), ("",) + tuple(sorted(requirement.extras))))
    return seen


def test_the_simulators_need_only_install_requires_and_the_sim_extra():
    """``pip install telephony-gateway[sim]`` is enough to import every simulator (not the test extras).

    Each simulator's third-party imports, resolved to their distributions, are within what
    install_requires and the ``sim`` extra pull in (with their own dependencies, as installed here).
    """
    from importlib import metadata

    from packaging.utils import canonicalize_name

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.split("#")[0].strip() for line in
             (cfg["options"]["install_requires"] + "\n" + cfg["options.extras_require"].get("sim", "")).splitlines()]
    closure = _installed_closure([line for line in lines if line])
    providers = metadata.packages_distributions()
    missing = {}
    for name, modules in _sim_top_level_imports().items():
        for module in sorted(modules):
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists & closure:
                missing.setdefault(name, []).append(f"{module} (from {', '.join(sorted(dists)) or 'nothing installed'})")
    assert missing == {}, "add these to install_requires or the [sim] extra in setup.cfg"
