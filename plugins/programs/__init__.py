"""Built-in library programs (being written)."""
