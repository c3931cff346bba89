"""Diff-aware context-caching proxy for long-context model servers."""

__version__ = "0.1.0"
