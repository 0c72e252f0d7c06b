"""Example job targets for the clustered scheduler (see targets.py)."""
