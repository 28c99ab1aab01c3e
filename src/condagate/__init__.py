"""condagate: a self-hosted conda package repository (hosted and proxy feeds)."""

__version__ = "0.1.0"
