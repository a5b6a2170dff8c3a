"""dlrun: a command-line experiment runner for deep-learning training."""

__version__ = "0.1.0"
