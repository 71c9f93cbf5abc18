"""Simulation: the far side of every interface (EVs, meter, grid, links)."""
