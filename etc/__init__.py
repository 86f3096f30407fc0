"""Packaged copy of etc/: the daemon loads its defaults from gateway.etc/gateway.toml."""
