"""attnbench: compare attention mechanisms (softmax and linear) as sequences grow."""

__version__ = "0.1.0"
