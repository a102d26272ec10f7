"""Built-in parsers plug-in (being written)."""
