"""Built-in tasks plug-in (being written)."""
