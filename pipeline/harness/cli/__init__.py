"""The harness's subcommands (scenario, simulate, load, experiment); pipeline.cli's lazy
table names them, so the core imports none of them until one runs."""
