"""gateway.testing, the helpers shipped for tests that run the real daemon."""

import socket

from gateway.testing import free_port


def test_free_port_never_hands_out_the_same_port_twice_in_a_row():
    """A test asking for several ports (admin, listeners, simulators) gets distinct ones, each bindable."""
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
