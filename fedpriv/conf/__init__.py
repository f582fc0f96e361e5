"""Hydra configuration groups for fedpriv-train (also reachable as conf/ at the top level)."""
