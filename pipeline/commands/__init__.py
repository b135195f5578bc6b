"""CLI command groups beyond `run` and `status`; each module exports `COMMANDS`."""
