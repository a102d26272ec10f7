"""diffcomp.train (being written)."""
