"""The in-memory store's old home: :class:`MemoryCdrStore` lives in :mod:`gateway.store.testing`."""

from gateway.store.testing import MemoryCdrStore

__all__ = ["MemoryCdrStore"]
