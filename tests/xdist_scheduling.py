"""The pytest-xdist scheduler `make test` uses: named modules whole in one process.

pytest-xdist's own `--dist loadgroup` reads groups from a suffix its workers add to each
test's node id (`item._nodeid`), which pytest 9.2 no longer reads (`Node.nodeid` is
`str(item._id)`): no test was grouped, and a module's expensive module-scoped fixtures
started again in every process that ran one of its tests. This scheduler decides from the
node ids the controller already has, so nothing depends on the workers' side.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling


class ModuleGroupScheduling(LoadScopeScheduling):
    """Each of `modules` is one work unit, so one process runs all its tests in a row;
    every other test is a unit of its own and goes to whichever process is free.

    `modules` are paths as node ids spell them (`tests/unit/test_x.py`). Units are handed
    out largest first (xdist's --loadscope-reorder, on by default), so a long shared
    module starts at once instead of being left for the end.
    """

    def __init__(
        self, config: pytest.Config, log: Producer | None = None, *, modules: Iterable[str]
    ) -> None:
        super().__init__(config, log)
        self.modules = frozenset(modules)

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if module in self.modules else nodeid
