"""Packaged data: the default simulated site."""
