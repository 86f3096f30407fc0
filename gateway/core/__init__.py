"""The protocol-agnostic call core: calls, legs, parties, state machines, registry, routing, errors (no I/O)."""
