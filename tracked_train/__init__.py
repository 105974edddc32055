"""tracked-train: train transformer language models with every run tracked, comparable and resumable."""

__version__ = "0.1.0"
