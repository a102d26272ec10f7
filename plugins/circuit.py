"""Built-in circuit plug-in (being written)."""
