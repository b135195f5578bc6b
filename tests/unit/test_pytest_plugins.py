"""This repository names its pytest plugins instead of letting pytest autoload them.

pytest rewrites the asserts of every module in an autoloaded plugin's distribution
(hypothesis, anyio, the whole of docpipe) in each test process, and of a plugin named
with `-p` only its own module (pyproject.toml says why). These tests keep the list honest.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shlex
import tomllib

import pytest

from tests.conftest import REPO

#: Installed plugins this repository does not load, and why.
LEFT_OUT = {
    "anyio": "no test here is an anyio test",
    "locust": "its fixtures are for pytest-style locustfiles; tests/load drives locust itself",
    "xdist.looponfail": "looponfail (-f) is not used",
}


def named_plugins() -> list[str]:
    with (REPO / "pyproject.toml").open("rb") as file:
        addopts = tomllib.load(file)["tool"]["pytest"]["ini_options"]["addopts"]
    words = shlex.split(addopts)
    assert "--disable-plugin-autoload" in words
    return [words[index + 1] for index, word in enumerate(words) if word == "-p"]


def test_every_installed_pytest_plugin_is_named_or_left_out_on_purpose() -> None:
    installed = {entry.name for entry in importlib.metadata.entry_points(group="pytest11")}
    named = set(named_plugins())
    assert installed - named - set(LEFT_OUT) == set(), "name it in addopts or in LEFT_OUT"
    assert named - installed == set(), "a plugin named in addopts is not installed"
    assert set(LEFT_OUT) & named == set()


def test_the_named_plugins_are_loaded(pytestconfig: pytest.Config) -> None:
    plugins = pytestconfig.pluginmanager
    for name in named_plugins():
        # Blocked: `-p no:randomly` on the command line.
        assert plugins.get_plugin(name) is not None or plugins.is_blocked(name), name


def _rewritten(module_name: str) -> bool:
    module = importlib.import_module(module_name)
    return type(module.__spec__.loader).__name__ == "AssertionRewritingHook"


def test_the_contract_suites_asserts_are_rewritten_and_product_code_is_not() -> None:
    # A failing contract check shows its operands (the plugin registers the contracts).
    assert _rewritten("pipeline.testing.contracts.store")
    assert _rewritten("pipeline.testing.contracts.redis_features")
    # Product code has no test asserts: rewriting it only cost every test process CPU.
    assert not _rewritten("pipeline.adapters.sql.hot")
    assert not _rewritten("pipeline.runtime.tasks")
