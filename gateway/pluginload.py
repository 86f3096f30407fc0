"""Finding plugins: the bundled ``gateway.plugins`` package plus operators' directories.

Drivers, media apps and SMS transports are ``twisted.plugin`` plugins. Bundled
ones live in ``plugins/`` (installed as ``gateway.plugins``); an operator adds
modules to a directory named in ``[gateway] plugin_dirs``, which is appended to
the package's search path, exactly as Twisted extends ``twisted.plugins``.
"""

from __future__ import annotations

import os

from twisted.logger import Logger
from twisted.plugin import getPlugins

import gateway.plugins

log = Logger()

__all__ = ["extend_plugin_path", "find_plugin", "plugins"]


def extend_plugin_path(dirs) -> None:
    """Search ``dirs`` (operator plugin directories) after the bundled plugins."""
    for d in dirs:
        path = os.path.abspath(d)
        if not os.path.isdir(path):
            log.warn("plugin directory {path} does not exist; ignored", path=path)
            continue
        if path not in gateway.plugins.__path__:
            gateway.plugins.__path__.append(path)
            log.info("loading plugins from {path} too", path=path)


def plugins(interface) -> list:
    """Every plugin providing ``interface``, bundled first."""
    return list(getPlugins(interface, gateway.plugins))


def find_plugin(interface, name: str):
    """The plugin providing ``interface`` whose ``name`` is ``name``, or None."""
    return next((p for p in plugins(interface) if getattr(p, "name", None) == name), None)
