"""transferkit.selection."""
