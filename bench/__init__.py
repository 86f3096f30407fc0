"""Benchmarks: ``python -m bench <name>`` (``make bench ARGS=<name>``); results in bench/README.md."""
