"""raysynth: Ray-native synthetic data for LLM self-improvement."""

__version__ = "0.1.0"
