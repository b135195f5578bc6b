"""Packaging: a plain install is a production worker; the harness, Flower and OCR are extras.

The commands that need an extra are run in a subprocess whose import system
cannot find the extra's modules (a sitecustomize puts None in sys.modules, as
for the [ocr] extra in test_local_ocr.py): each exits 2 naming the extra,
while `docpipe run` on the samples still completes every document.
"""

from __future__ import annotations

import glob
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from pipeline import library
from pipeline.harness.perf.loadtest import DEFAULT_DOCUMENTS, DEFAULT_LOCUSTFILE
from tests.conftest import REPO, SAMPLES

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: What the harness and flower extras provide, as import names.
EXTRA_MODULES = ("locust", "matplotlib", "moto", "flask", "flask_cors", "flower")


def requirement_name(requirement: str) -> str:
    """`moto[s3]==5.2.5` -> `moto` (normalised as pip does: lower case, `_`/`.` -> `-`)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def docpipe_without_extras(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    hide = cwd / "hide_extras"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "# None in sys.modules: find_spec answers None and import raises ImportError.\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in EXTRA_MODULES)
    )
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{hide}:{REPO}",
            "HOME": str(cwd),
            "DOCPIPE_UNDER_TEST": "1",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_runtime_dependencies_leave_the_harness_flower_and_dev_tools_to_extras() -> None:
    project = PYPROJECT["project"]
    runtime = {requirement_name(r) for r in project["dependencies"]}
    extras = {
        name: {requirement_name(r) for r in reqs}
        for name, reqs in project["optional-dependencies"].items()
    }

    for harness_only in ("moto", "locust", "matplotlib", "flask-cors", "flower", "pytest", "kuzu"):
        assert harness_only not in runtime, harness_only
    # Imported by docpipe itself (pipeline/adapters/openai_llm.py, fakes/openai_http.py).
    assert "httpx2" in runtime
    assert {"moto", "locust", "matplotlib", "flask-cors"} <= extras["harness"]
    assert extras["flower"] == {"flower"}
    assert {"rapidocr-onnxruntime", "pypdfium2"} <= extras["ocr"]
    assert "docpipe" in extras["dev"]  # docpipe[harness,ocr,flower]: the tests need them all
    dev_self = next(r for r in project["optional-dependencies"]["dev"] if r.startswith("docpipe"))
    assert set(re.findall(r"\w+", dev_self.split("[", 1)[1])) == {"harness", "ocr", "flower"}


def test_constraints_pin_every_declared_requirement_exactly() -> None:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[requirement_name(name)] = version
    project = PYPROJECT["project"]
    declared = [*project["dependencies"]] + [
        r for reqs in project["optional-dependencies"].values() for r in reqs
    ]
    unpinned = {requirement_name(r) for r in declared} - set(pins) - {"docpipe"}
    assert not unpinned, f"run `make lock`: constraints.txt lacks {sorted(unpinned)}"
    makefile = (REPO / "Makefile").read_text()
    assert "$(STAMP): pyproject.toml $(CONSTRAINTS)" in makefile
    assert "-c $(CONSTRAINTS) -e '.[dev]'" in makefile


def test_the_package_ships_the_scenario_library_samples_and_locustfile() -> None:
    # In a checkout they are the top-level folders (the wheel copies them).
    assert (REPO / "scenarios").resolve() == library.SCENARIOS
    assert DEFAULT_DOCUMENTS == library.SAMPLES == SAMPLES.resolve()
    assert (REPO / "pipeline/harness/perf/locustfile.py").resolve() == DEFAULT_LOCUSTFILE
    assert (
        "from pipeline.harness.perf.locustfile import DocumentUser"
        in (REPO / "tests" / "load" / "locustfile.py").read_text()
    )
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["pipeline"] and (REPO / "pipeline" / "py.typed").exists()
    assert "samples/*" in package_data["pipeline.library"]
    assert "scenarios/*.yaml" in package_data["pipeline.library"]
    # The scenarios name their documents relative to themselves (../samples/...), which
    # holds in a checkout and in the wheel (pipeline/library/{scenarios,samples}).
    referenced = 0
    for path in library.SCENARIOS.glob("*.yaml"):
        for entry in yaml.safe_load(path.read_text()).get("documents", []):
            for pattern in entry.get("files", []):
                assert pattern.startswith("../samples/"), (path.name, pattern)
                assert glob.glob(str(library.SCENARIOS / pattern)), (path.name, pattern)
                referenced += 1
    assert referenced >= 7


def test_docpipe_run_needs_no_extra(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for sample in SAMPLES.iterdir():
        (inbox / sample.name).write_bytes(sample.read_bytes())

    result = docpipe_without_extras(tmp_path, "run", "inbox", "--json")

    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)["documents"]
    assert [row["status"] for row in rows] == ["completed"] * len(list(SAMPLES.iterdir()))


def test_commands_that_need_an_absent_extra_exit_2_naming_it(tmp_path: Path) -> None:
    load = docpipe_without_extras(tmp_path, "load", "--duration", "2", "--report", "r")
    plot = docpipe_without_extras(tmp_path, "simulate", "--plot", "sweep.png")
    flower = docpipe_without_extras(tmp_path, "flower")
    cloud = docpipe_without_extras(
        tmp_path, "scenario", "run", str(REPO / "scenarios" / "sim_cloud_smoke.yaml")
    )

    for result, extra, needed in (
        (load, "harness", "docpipe load needs locust, matplotlib"),
        (plot, "harness", "simulate --plot needs matplotlib"),
        (flower, "flower", "docpipe flower needs flower"),
        (cloud, "harness", "the sim-cloud profile needs moto, flask, flask_cors"),
    ):
        assert result.returncode == 2, (result.args, result.stderr[-3000:])
        assert "Traceback" not in result.stderr
        assert needed in result.stderr + result.stdout
        assert f"install 'docpipe[{extra}]'" in result.stderr + result.stdout
    assert not (tmp_path / "r").exists()  # stopped before any work
    assert not (tmp_path / "sweep.png").exists()
