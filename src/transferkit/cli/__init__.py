"""The ``transferkit`` command line: a thin layer over the Python API (no ML logic here)."""
