"""Facts the README states that the repository can check: they drift silently otherwise."""

from __future__ import annotations

import re

from pipeline.settings import Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_states_how_many_scenario_files_there_are() -> None:
    (stated,) = re.findall(r"The library \((\d+) files\)", README)
    assert int(stated) == len(list((REPO / "scenarios").glob("*.yaml")))


def test_the_settings_table_names_the_graph_url_and_its_default() -> None:
    default = Settings.model_fields["graph_url"].default
    assert f"| `DOCPIPE_GRAPH_URL` | `{default}` |" in README
