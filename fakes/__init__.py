"""Typed, stateful test doubles for the pipeline's ports (in-memory or Redis-backed)."""
