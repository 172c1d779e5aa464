"""runlab's shared package: wire messages, topics, config loading and logging."""

__version__ = "0.1.0"
