"""Plugins bundled with the gateway, found with ``twisted.plugin.getPlugins``.

Installed as ``gateway.plugins`` (see ``package_dir`` in setup.cfg), never as a
top-level ``plugins`` package. Operators' own plugin modules are added to this
package's search path from ``[gateway] plugin_dirs`` by
:func:`gateway.pluginload.extend_plugin_path`.
"""
