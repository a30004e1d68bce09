"""aisle: e-commerce search and recommendation models served on NVIDIA Triton Inference Server."""

__version__ = "0.1.0"
