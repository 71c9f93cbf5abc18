"""Simulation: the far side of every interface (EVs, meter, grid, the upstream DMS)."""
