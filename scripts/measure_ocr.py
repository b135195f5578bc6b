"""Measure local OCR on scans of the sample PDFs, whose true text is their text layer.

Run with the project's virtualenv and the `[ocr]` extra:
`.venv/bin/python scripts/measure_ocr.py [--out DIR] [--rotate DEGREES] [--dpi DPI]`.

Each `samples/*.pdf` is rendered to an image-only PDF (no text layer; the first
page of the first document turned by `--rotate` degrees, as a scanner feeds a
sheet askew). Both sets then go through `docpipe run --json` (the embedded
default, a subprocess in a fresh folder) and this prints, per document:

- letter similarity: difflib ratio of the OCR text to the text layer, whitespace
  collapsed (page markers included on both sides);
- word recall: the text layer's distinct words of 4+ letters found in the OCR text;
- entities: canonical entities (type, normalised name) of the text-layer run
  also found in the scan's run;
- pages per minute: scanned pages over the seconds local OCR took (ocr_metadata).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORD_RE = re.compile(r"[A-Za-z]{4,}")


def render_scan(source: Path, target: Path, *, rotate_first: float) -> None:
    """An image-only copy of `source` (grey pages at 200 dpi), its first page turned."""
    from pipeline.adapters.local_ocr import scan_pdf

    target.write_bytes(scan_pdf(source.read_bytes(), dpi=200, rotate_degrees=[rotate_first]))


def docpipe_run(workdir: Path, inbox: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", inbox, "--json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 1):
        raise SystemExit(f"docpipe run {inbox} failed ({result.returncode}): {result.stderr}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def normalise(text: str) -> str:
    return " ".join(text.split())


def measure(workdir: Path, rotate: float) -> list[dict[str, Any]]:
    from pipeline.adapters.sql import create_store

    text_dir, scan_dir = workdir / "text", workdir / "scan"
    text_dir.mkdir(parents=True, exist_ok=True)
    scan_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted((REPO / "samples").glob("*.pdf"))
    for number, source in enumerate(sources):
        (text_dir / source.name).write_bytes(source.read_bytes())
        render_scan(source, scan_dir / source.name, rotate_first=rotate if number == 0 else 0.0)
    text_run = docpipe_run(workdir, "text")
    scan_run = docpipe_run(workdir, "scan")
    store = create_store(f"sqlite:///{workdir / '.docpipe' / 'docpipe.db'}", create=False)
    rows: list[dict[str, Any]] = []
    try:
        by_name = {Path(row["file"]).name: row for row in text_run["documents"]}
        for scan_row in scan_run["documents"]:
            name = Path(scan_row["file"]).name
            text_row = by_name[name]
            truth_doc = store.get_document(text_row["document_uuid"])
            scan_doc = store.get_document(scan_row["document_uuid"])
            truth = normalise(truth_doc.raw_text or "")
            found = normalise(scan_doc.raw_text or "")
            truth_words = set(WORD_RE.findall(truth))
            found_words = set(WORD_RE.findall(found))
            truth_entities = _entities(store, text_row["document_uuid"])
            scan_entities = _entities(store, scan_row["document_uuid"])
            metadata = scan_doc.ocr_metadata
            rows.append(
                {
                    "document": name,
                    "status": scan_row["status"],
                    "error": scan_row["error"],
                    "pages": metadata.get("pages"),
                    "ocr_pages": metadata.get("ocr_pages", 0),
                    "ocr_seconds": metadata.get("ocr_seconds", 0.0),
                    "ocr_cpu_seconds": metadata.get("ocr_cpu_seconds", 0.0),
                    "letter_similarity": round(
                        difflib.SequenceMatcher(None, truth, found, autojunk=False).ratio(), 3
                    ),
                    "word_recall": round(len(truth_words & found_words) / len(truth_words), 3)
                    if truth_words
                    else None,
                    "entities_text_layer": len(truth_entities),
                    "entities_scan": len(scan_entities),
                    "entities_found": len(truth_entities & scan_entities),
                    "mentions_text_layer": text_row["mentions"],
                    "mentions_scan": scan_row["mentions"],
                }
            )
    finally:
        store.close()
    return rows


def _entities(store: Any, document_uuid: str) -> set[tuple[str, str]]:
    return {
        (str(entity.entity_type), entity.normalized_name)
        for entity in store.get_canonical_entities(document_uuid)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".docpipe/measure_ocr"))
    parser.add_argument("--rotate", type=float, default=2.5, help="degrees, first page")
    args = parser.parse_args()
    workdir = args.out.resolve()
    rows = measure(workdir, args.rotate)
    pages = sum(int(row["ocr_pages"] or 0) for row in rows)
    seconds = sum(float(row["ocr_seconds"] or 0.0) for row in rows)
    header = (
        f"{'document':<36} {'status':<10} {'pages':>5} {'letters':>7} {'recall':>6} "
        f"{'entities found/text layer (scan total)':>39} {'s/page':>6}"
    )
    print(header)
    for row in rows:
        per_page = row["ocr_seconds"] / row["ocr_pages"] if row["ocr_pages"] else 0.0
        entities = f"{row['entities_found']}/{row['entities_text_layer']} ({row['entities_scan']})"
        print(
            f"{row['document']:<36} {row['status']:<10} {row['ocr_pages']!s:>5} "
            f"{row['letter_similarity']:>7.3f} {row['word_recall'] or 0:>6.3f} "
            f"{entities:>39} {per_page:>6.1f}"
        )
    cpu = sum(float(row["ocr_cpu_seconds"] or 0.0) for row in rows)
    if seconds:
        print(
            f"local OCR: {pages} page(s) in {seconds:.1f} s = {60 * pages / seconds:.1f} pages/min "
            f"({cpu / pages:.1f} s of CPU per page; load average {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores)"
        )
    (workdir / "measure_ocr.json").write_text(json.dumps(rows, indent=2))
    print(f"details: {workdir / 'measure_ocr.json'}")


if __name__ == "__main__":
    main()
