"""Simulators of the peer systems the gateway talks to, usable from tests and the command line.

Each simulator is written from the specifications in ``shared/protocols``; run one with
``python -m gateway.sim <name> --help``.
"""
