"""`python -m pipeline`: the `docpipe` command line."""

from pipeline.cli import entrypoint

entrypoint()
