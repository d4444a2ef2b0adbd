"""Feast feature repository and the gateway's online lookups (not built yet)."""
