"""Issue 17 follow-ups: local OCR's time limit fits the task limits; skipped scanned pages
are recorded and reported; recognised pages are cached so a redelivered poll resumes.

None of these needs the `[ocr]` extra: a blank PDF page has no text layer, which is all
the engine looks at before OCR, and the recogniser is stubbed where pages are "read".
"""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigurationError
from pipeline.settings import load_settings

SHORT_LIMITS = {"task_soft_time_limit_s": 300, "task_time_limit_s": 400}


# --- 1. ocr_local_job_timeout_s fits below task_soft_time_limit_s ------------------------------


@pytest.mark.parametrize("job_timeout_s", [300, 290])
def test_a_local_ocr_job_limit_that_does_not_fit_the_soft_limit_is_refused_naming_both(
    job_timeout_s: float, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))  # no project .env read
    with pytest.raises(ConfigurationError) as refused:
        load_settings(**SHORT_LIMITS, ocr_local_job_timeout_s=job_timeout_s)
    message = str(refused.value)
    assert f"DOCPIPE_OCR_LOCAL_JOB_TIMEOUT_S ({job_timeout_s})" in message
    assert "must be below DOCPIPE_TASK_SOFT_TIME_LIMIT_S (300)" in message
    assert "DOCPIPE_OCR_LOCAL=false" in message


def test_a_local_ocr_job_limit_with_room_for_one_page_passes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    assert load_settings(**SHORT_LIMITS, ocr_local_job_timeout_s=280).ocr_local_job_timeout_s == 280


def test_with_local_ocr_off_its_job_limit_is_not_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    settings = load_settings(**SHORT_LIMITS, ocr_local=False, ocr_local_job_timeout_s=600)
    assert settings.ocr_local is False
