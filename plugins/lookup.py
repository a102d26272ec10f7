"""Built-in lookup plug-in (being written)."""
