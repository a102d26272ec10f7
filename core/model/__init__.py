"""diffcomp.model (being written)."""
