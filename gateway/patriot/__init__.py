"""Patriot alarm-monitoring operators: the Dialler Bridge server and the Desktop API client."""
