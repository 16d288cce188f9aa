"""transferkit.transfer."""
