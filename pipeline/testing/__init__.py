"""docpipe's public testing API, for this repository and for projects built on docpipe.

- `pipeline.testing.clocks`: clocks implementing the `Clock` port (manual, stepping,
  the simulator's virtual clock, the system clock);
- `pipeline.testing.faults`: declaring faults - in process (`ScriptedFaults`) or
  shared with worker processes through Redis (`installed_faults`, `FaultRule`);
- `pipeline.testing.contracts`: one contract suite per port, each a base class
  parameterised by an implementation factory, run here on every implementation;
- `pipeline.testing.stack`: the private stack without Docker (redis-server,
  workers, kill -9 of a worker, Redis restart, database cut);
- `pipeline.testing.plugin`: the pytest plugin (entry point `docpipe`): scenario
  YAML files as test items, and fixtures for the private stack.

The core (everything outside pipeline.harness and pipeline.testing) never imports
this package (tests/unit/test_import_graph.py). This module imports nothing, so
the pytest plugin stays cheap for every project that has docpipe installed.
"""
