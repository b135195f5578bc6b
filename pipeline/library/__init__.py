"""The scenario library and the sample documents, shipped inside the package.

`scenarios/` and `samples/` stay at the repository's top level (the design
card's folders); here they are symbolic links to them, which the wheel build
follows, so an installed docpipe carries the same files. The scenarios name
their documents as `../samples/...`, which holds in both places.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The scenario YAML files (`docpipe scenario run "$SCENARIOS"/*.yaml`).
SCENARIOS = (HERE / "scenarios").resolve()
#: The sample documents: `docpipe load` and `docpipe simulate` use them by default.
SAMPLES = (HERE / "samples").resolve()
