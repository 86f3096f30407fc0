"""The names of the cluster's Redis keys and channels, in one place.

Keys (all under ``gw:``):

- ``gw:node:<node>``: a live node's heartbeat (a hash: ``instance``, ``info``), with the node TTL;
  it is the node's lease, under which its call records are written;
- ``gw:owned:<node>``: the set of the call ids a node owns (what a survivor ends when it dies);
- ``gw:call:<call id>``: a call record (JSON);
- ``gw:lease:<name>`` and ``gw:lease:<name>:token``: a lease (``<token>:<holder>``) and its
  fencing-token counter.

Channels: ``ext:<extension>`` (a desktop user's call events), ``gw:cmd:<node>`` (commands routed
to a node) and ``gw:reply:<node>`` (the replies to a node's commands).
"""

from __future__ import annotations

PREFIX = "gw:"

NODE = PREFIX + "node:"
OWNED = PREFIX + "owned:"
CALL = PREFIX + "call:"
LEASE = PREFIX + "lease:"


def node(node_id: str) -> str:
    return NODE + node_id


def owned(node_id: str) -> str:
    return OWNED + node_id


def call(call_id: str) -> str:
    return CALL + call_id


def lease(name: str) -> str:
    return LEASE + name


def lease_token(name: str) -> str:
    return LEASE + name + ":token"


def extension_channel(extension: str) -> str:
    return "ext:" + extension


def command_channel(node_id: str) -> str:
    return PREFIX + "cmd:" + node_id


def reply_channel(node_id: str) -> str:
    return PREFIX + "reply:" + node_id
