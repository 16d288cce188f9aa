"""transferkit: move knowledge from one deep-learning model into another."""

__version__ = "0.1.0"
