"""Hydra config tree, shipped as package data (``invdiff.configs``)."""
