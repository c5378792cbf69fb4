"""cell2location-nf: the Python side of the pipeline (one module per pipeline step)."""

__version__ = "0.1.0"
