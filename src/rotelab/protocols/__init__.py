"""Protocols: each a function from a config to a run directory."""
