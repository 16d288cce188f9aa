"""transferkit.cli."""
