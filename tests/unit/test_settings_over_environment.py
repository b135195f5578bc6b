"""`settings_over_environment`: the simulator's cheap Settings are the full build's."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.harness.explore.generate import SHORT_VISIBILITY
from pipeline.settings import Settings, settings_over_environment


def full(values: dict[str, Any]) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


ENVIRONMENT = {
    "DOCPIPE_MAX_RETRIES": "5",
    "DOCPIPE_LATENCY_OVERRIDES": '{"llm_call": "fixed:5"}',
    "DOCPIPE_OPENAI_API_KEY": "sk-from-the-environment",
    "docpipe_project_name": "lower-case-name",
    "DOCPIPE_FAULT_INJECTION": "true",
}

VALUES: list[dict[str, Any]] = [
    {},
    {"max_retries": 1, "project_name": "given"},
    # Strings are parsed as the environment's are; a given value beats the environment's.
    {"max_retries": "2", "max_redeliveries": "1", "ocr_local": "false"},
    # What docpipe explore's short-visibility schedules set (strings where it can).
    SHORT_VISIBILITY | {"visibility_timeout_s": "5", "latency_overrides": {}},
    {"openai_api_key": "sk-given", "database_url": "sqlite://", "eager": True},
]


@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("environment", [{}, ENVIRONMENT])
def test_the_same_settings_as_the_full_build(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], values: dict[str, Any]
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    built = settings_over_environment(dict(values))
    expected = full(dict(values))
    assert built == expected
    assert built.model_fields_set == expected.model_fields_set
    assert built.model_dump() == expected.model_dump()


def test_a_changed_environment_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCPIPE_MAX_RETRIES", "4")
    assert settings_over_environment({}).max_retries == 4
    monkeypatch.setenv("DOCPIPE_MAX_RETRIES", "6")
    assert settings_over_environment({}).max_retries == 6
    monkeypatch.delenv("DOCPIPE_MAX_RETRIES")
    assert settings_over_environment({}).max_retries == full({}).max_retries


def test_invalid_values_are_refused_with_the_full_build_s_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCPIPE_MAX_RETRIES", "3")
    bad = {"max_retries": "many", "task_soft_time_limit_s": 10, "task_time_limit_s": 5}
    with pytest.raises(ValidationError) as fast:
        settings_over_environment(bad)
    with pytest.raises(ValidationError) as slow:
        full(bad)
    assert fast.value.errors(include_url=False) == slow.value.errors(include_url=False)
    # A cross-field check (the model validator) too.
    relation = {"task_soft_time_limit_s": 10, "task_time_limit_s": 5}
    with pytest.raises(ValidationError, match="task_soft_time_limit_s must be below"):
        settings_over_environment(relation)


def test_an_invalid_environment_that_the_values_override_still_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCPIPE_MAX_RETRIES", "many")
    assert settings_over_environment({"max_retries": 2}) == full({"max_retries": 2})
    with pytest.raises(ValidationError, match="max_retries"):
        settings_over_environment({})
