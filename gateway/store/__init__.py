"""Durable records: CDRs and the rest, behind an interface that is not tied to SQLite."""
