"""transferkit.evaluation."""
