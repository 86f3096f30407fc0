"""A Twisted telephony gateway: OptimaCCS, Patriot, OpenMethods HIS and Expertflow in one call model."""

__version__ = "0.1.0"
