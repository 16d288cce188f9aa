"""transferkit.engine."""
