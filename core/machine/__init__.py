"""diffcomp.machine (being written)."""
