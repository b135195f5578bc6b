"""`generate.name` cannot write outside the run folder (issue 11, item 4).

The runner writes `inbox / name`; `../` or an absolute name wrote anywhere the
user running the scenario may write. Refused at validation, with the key path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.harness.scenarios.documents import materialize
from pipeline.harness.scenarios.model import ScenarioError, parse_scenario
from tests.conftest import REPO


def scenario(*names: str | None, count: int = 1) -> dict[str, Any]:
    documents = [{"generate": {"type": "txt"}}]  # index 0: a default name, always fine
    documents += [
        {"generate": {"type": "txt", "count": count, **({"name": n} if n is not None else {})}}
        for n in names
    ]
    return {"name": "t", "description": "d", "documents": documents}


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("../escaped.txt", "without '/'"),
        ("../../../tmp/escaped.txt", "without '/'"),
        ("sub/dir.txt", "without '/'"),
        ("..\\escaped.txt", "without '/'"),
        ("/tmp/absolute.txt", "not an absolute path"),
        ("..", "not '.' or '..'"),
        (".", "not '.' or '..'"),
        ("", "must not be empty"),
        ("two\nlines.txt", "control characters"),
    ],
)
def test_a_name_that_leaves_the_run_folder_is_refused_with_its_key_path(
    name: str, fragment: str
) -> None:
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(scenario(name), "f.yaml")
    message = str(raised.value)
    assert message.startswith("f.yaml: documents[1].generate.name: "), message
    assert fragment in message, message


def test_a_template_that_could_render_a_separator_or_fails_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"documents\[1\].generate.name: .* without '/'"):
        parse_scenario(scenario("x{i:/>3}", count=2), "f.yaml")  # '/' as the fill character
    with pytest.raises(ScenarioError, match=r"documents\[1\].generate: name is not a valid"):
        parse_scenario(scenario("x{i}{j}.txt", count=2), "f.yaml")


def test_plain_names_and_templates_stay_inside_the_inbox(tmp_path: Path) -> None:
    loaded = parse_scenario(scenario("memo {i}.txt", "..hidden-ish.txt", count=1), "f.yaml")
    inbox = tmp_path / "run" / "inbox"

    documents = materialize(loaded, None, seed=1, inbox=inbox)

    assert {d.name for d in documents} == {"generated0-001.txt", "memo 1.txt", "..hidden-ish.txt"}
    assert all(d.path.resolve().parent == inbox.resolve() for d in documents)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        d.name for d in documents
    )


def test_validate_refuses_the_file_before_anything_is_written(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    spec = tmp_path / "escape.yaml"
    spec.write_text(
        "name: escape\ndescription: d\n"
        f"documents:\n  - generate: {{type: txt, name: {target}}}\n"
        "  - generate: {type: txt, name: ../../escaped.txt}\n"
    )
    for command in ("validate", "run"):
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "scenario", command, str(spec)],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "documents[0].generate.name: must be a file name, not an absolute path" in (
            result.stderr
        )
        assert "documents[1].generate.name: must be a file name without '/'" in result.stderr
    assert not target.exists()
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_files_may_be_absolute_paths_or_patterns(tmp_path: Path) -> None:
    """An absolute path under `files:` (what `docpipe explore` writes) is read as written;
    pathlib's glob refused it with NotImplementedError."""
    samples = REPO / "samples"
    loaded = parse_scenario(
        {
            "name": "t",
            "description": "d",
            "documents": [
                {"files": [str(samples / "affidavit_of_jane_holloway.txt")]},
                {"files": [str(samples / "*.docx")]},
            ],
        },
        "f.yaml",
    )

    documents = materialize(loaded, tmp_path / "scenario.yaml", seed=1, inbox=tmp_path / "inbox")

    names = [d.name for d in documents]
    assert names[0] == "affidavit_of_jane_holloway.txt"
    assert names[1:] == sorted(p.name for p in samples.glob("*.docx"))
