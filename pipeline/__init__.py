"""docpipe: the Celery document pipeline as a test-first reference harness."""

__version__ = "0.1.0"
