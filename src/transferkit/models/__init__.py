"""transferkit.models."""
