"""Local OCR for image-only PDF pages: pypdfium2 renders, rapidocr recognises, offline.

Installed with the `[ocr]` extra (`pip install 'docpipe[ocr]'`); both libraries
are imported lazily, so the plain install stays lean and only a process that
really reads a scan (the OCR worker) loads the ONNX models, once per process.

Pages that have a text layer keep it; only pages without one are rendered and
recognised, so a mixed PDF is read page by page. Recognised lines are
Textract-shaped LINE blocks (confidence 0-100, normalised geometry) and lines
under the same minimum confidence as Textract's are left out.

rapidocr's default recognition model reads the letters well but often drops
the spaces between words ("DennisRayWhitcomb"). The recogniser's CTC output
says at which column of the line image each character was read; between two
characters read next to each other, a stretch of the line image without ink at
least `WORD_GAP_LINE_HEIGHTS` of the line's height wide is a space
(`space_words_by_ink`). Where the image cannot tell (no contrast), a gap in
recogniser columns that the characters' widths do not explain is one
(`space_words`). Measured on the repository's samples, scripts/measure_ocr.py.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import DocumentTooLarge, PermanentError

if TYPE_CHECKING:
    from pipeline.ports import Cache
    from pipeline.settings import Settings

#: What a user runs to read scans locally (said in every failure that needs it).
INSTALL_HINT = "pip install 'docpipe[ocr]'"
#: Rendering resolution: on scans of the samples 200 dpi read better than 150 dpi
#: (letters 0.991 vs 0.969, words 0.92 vs 0.91) in about the same time (the
#: detector scales the page down to 2000 px anyway).
DEFAULT_DPI = 200
#: A gap of this many recogniser columns (4 px of a 48 px high line) between two
#: characters is a word boundary; 5 and 7 measured worse than 6 on the samples.
WORD_GAP_COLUMNS = 6
#: The text detector sees the page scaled down to this many pixels on its longer side;
#: the recogniser still reads each line cropped from the full rendering. Detection
#: costs in proportion to the pixels: on the samples' pages 1100 px took 0.5-0.7 s of
#: CPU instead of 1.5-1.8 s at rapidocr's 2000 px, and found the same lines.
DETECT_MAX_SIDE = 1100
#: Lines go through the recogniser one at a time: rapidocr's batches of 6 pad every
#: line to the widest in the batch, and measured 1.5x the CPU time (4.7 s vs 3.0 s
#: for a page's 26 lines).
RECOGNISE_BATCH = 1
ENGINE_NAME = "local-ocr"


def local_ocr_installed() -> bool:
    """True when the `[ocr]` extra (rapidocr-onnxruntime, pypdfium2) is importable."""
    return all(
        importlib.util.find_spec(name) is not None for name in ("rapidocr_onnxruntime", "pypdfium2")
    )


def missing_extra_reason(pages: int, scanned: int) -> str:
    """The failure reason for a PDF with image-only pages when the extra is absent."""
    if scanned == pages:
        found = f"PDF has no text layer ({pages} page(s), probably scanned images)"
    else:
        found = f"{scanned} of {pages} PDF page(s) have no text layer (probably scanned images)"
    if local_ocr_installed():
        return f"{found}; it needs OCR, and local OCR is off (set DOCPIPE_OCR_LOCAL=true)"
    return f"{found}; it needs OCR: enable local OCR with {INSTALL_HINT}"


def enable_local_ocr_hint() -> str:
    """What turns local OCR on in this process: the extra, or the setting once it is installed."""
    return "set DOCPIPE_OCR_LOCAL=true" if local_ocr_installed() else "install 'docpipe[ocr]'"


@dataclass(frozen=True)
class OcrLine:
    """One recognised line, in Textract's terms (confidence 0-100, geometry 0-1 of the page)."""

    page: int
    text: str
    confidence: float
    left: float
    top: float
    width: float
    height: float
    polygon: tuple[tuple[float, float], ...] = ()

    def as_block(self) -> dict[str, Any]:
        """A Textract LINE block (what GetDocumentTextDetection answers)."""
        return {
            "BlockType": "LINE",
            "Page": self.page,
            "Text": self.text,
            "Confidence": self.confidence,
            "Geometry": {
                "BoundingBox": {
                    "Left": self.left,
                    "Top": self.top,
                    "Width": self.width,
                    "Height": self.height,
                },
                "Polygon": [{"X": x, "Y": y} for x, y in self.polygon],
            },
        }


@dataclass
class ScanResult:
    """Page texts of a whole PDF (text layer or OCR) and what OCR did."""

    pages: list[str]
    ocr_pages: list[int] = field(default_factory=list)
    lines: list[OcrLine] = field(default_factory=list)
    low_confidence_lines_dropped: int = 0
    #: Scanned pages whose lines came from the page cache (read by an earlier delivery).
    pages_from_cache: int = 0
    seconds: float = 0.0
    #: CPU time of the whole process (onnxruntime's threads included) while reading.
    cpu_seconds: float = 0.0

    def metadata(self) -> dict[str, Any]:
        return {
            "ocr_engine": ENGINE_NAME,
            "ocr_pages": len(self.ocr_pages),
            "ocr_lines": len(self.lines),
            "low_confidence_lines_dropped": self.low_confidence_lines_dropped,
            "ocr_pages_from_cache": self.pages_from_cache,
            "ocr_seconds": round(self.seconds, 2),
            "ocr_cpu_seconds": round(self.cpu_seconds, 2),
        }


#: Advance widths (em) of a proportional font (Helvetica's, rounded): the expected distance
#: between two characters' centres, so "il" and "MW" are not mistaken for word gaps.
_NARROW = dict.fromkeys("ijl.,:;'!|", 0.25) | dict.fromkeys("ftrI-()/[]", 0.3)
_WIDE = dict.fromkeys("mwMW@", 0.85) | dict.fromkeys("ABCDGHKNOQRUVXY&", 0.7)
_CHAR_WIDTHS = _NARROW | _WIDE
_DEFAULT_WIDTH = 0.56
#: A gap this much (em) wider than the two characters' widths explain is a space ...
WORD_GAP_EM = 0.25
#: ... when it is at least this many columns; at `WORD_GAP_COLUMNS` it always is.
MIN_WORD_GAP_COLUMNS = 4


def space_words(
    chars: Sequence[str], columns: Sequence[int], min_gap: int = WORD_GAP_COLUMNS
) -> str:
    """The line's text with a space wherever two characters were read far apart.

    `columns[i]` is the recogniser column at which `chars[i]` was decoded. A gap
    of `min_gap` columns is a space; so is a smaller one (at least
    `MIN_WORD_GAP_COLUMNS`) that exceeds what the two characters' widths explain
    by `WORD_GAP_EM`, with the line's columns per em estimated as the median
    over its character pairs. Spaces the model did read are kept, never doubled.
    (Measured on the samples: word recall 0.89 without, 0.93 with the fixed gap
    alone, 0.94 with both rules.)
    """
    if len(chars) != len(columns) or not chars:
        return "".join(chars)
    pairs = [
        (index, columns[index] - columns[index - 1], _pair_width(chars[index - 1], chars[index]))
        for index in range(1, len(chars))
        if chars[index] != " " and chars[index - 1] != " "
    ]
    columns_per_em = statistics.median(gap / width for _, gap, width in pairs) if pairs else 0.0
    spaces = {
        index
        for index, gap, width in pairs
        if gap >= min_gap
        or (
            gap >= MIN_WORD_GAP_COLUMNS
            and columns_per_em > 0
            and gap - columns_per_em * width >= WORD_GAP_EM * columns_per_em
        )
    }
    out: list[str] = []
    for index, char in enumerate(chars):
        if index in spaces:
            out.append(" ")
        out.append(char)
    return "".join(out).strip()


#: A stretch without ink this wide (times the line image's height) between two
#: characters is a word space. Recorded lines of the sample scans (tests/unit/
#: fixtures/ocr_line_ink.json): blank stretches inside all-capital words reach 0.2
#: of the height (T's crossbar, LT), spaces between them are 0.28 or more; 0.22-0.28
#: all read 27 of 28 capital lines and 123-124 of 140 others word for word, against
#: 11 and 114 with the column rule (`space_words`) alone.
WORD_GAP_LINE_HEIGHTS = 0.25
#: A line image whose darkest and lightest grey differ less than this has no
#: readable ink profile; the column rule decides there.
_MIN_INK_CONTRAST = 32


def ink_columns(image: Any) -> Any | None:
    """Which columns of a line image (grey or RGB array) hold ink, or None (no contrast).

    A pixel is ink when it is darker than midway between the image's darkest and
    lightest grey, so the threshold follows the scan's own contrast.
    """
    import numpy

    grey = numpy.asarray(image, dtype=numpy.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    darkest, lightest = float(grey.min()), float(grey.max())
    if lightest - darkest < _MIN_INK_CONTRAST:
        return None
    return (grey < (darkest + lightest) / 2).any(axis=0)


def space_words_by_ink(
    chars: Sequence[str],
    columns: Sequence[int],
    column_count: float,
    ink: Sequence[bool],
    height: int,
    min_gap_heights: float = WORD_GAP_LINE_HEIGHTS,
) -> str:
    """The line's text with a space wherever a wide blank stretch separates two characters.

    `columns[i]` is the recogniser column at which `chars[i]` was read, out of
    `column_count` columns spanning the `len(ink)` pixels of the line image; the
    widest stretch of columns without ink between two adjacent characters'
    centres (`ink[x]` False) that is at least `min_gap_heights` x `height`
    pixels wide is a space. Spaces the model did read are kept, never doubled.
    """
    if len(chars) != len(columns) or not chars or column_count <= 0 or height <= 0:
        return "".join(chars)
    pixels_per_column = len(ink) / column_count
    min_gap = min_gap_heights * height
    runs = _blank_runs(ink)
    out: list[str] = []
    for index, char in enumerate(chars):
        if index and char != " " and chars[index - 1] != " ":
            left = (columns[index - 1] + 0.5) * pixels_per_column
            right = (columns[index] + 0.5) * pixels_per_column
            widest = max(
                (min(end, right) - max(start, left) for start, end in runs),
                default=0.0,
            )
            if widest >= min_gap:
                out.append(" ")
        out.append(char)
    return " ".join("".join(out).split())


def _blank_runs(ink: Sequence[bool]) -> list[tuple[int, int]]:
    """Half-open [start, end) pixel ranges of the columns without ink."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for x, has_ink in enumerate(ink):
        if not has_ink and start is None:
            start = x
        elif has_ink and start is not None:
            runs.append((start, x))
            start = None
    if start is not None:
        runs.append((start, len(ink)))
    return runs


def _pair_width(left: str, right: str) -> float:
    """Distance (em) between the centres of two adjacent characters."""
    return (_CHAR_WIDTHS.get(left, _DEFAULT_WIDTH) + _CHAR_WIDTHS.get(right, _DEFAULT_WIDTH)) / 2


class _SpacingRecognizer:
    """Wraps rapidocr's recogniser: asks it for character columns, answers spaced text."""

    def __init__(self, recognizer: Any, min_gap: int) -> None:
        self._recognizer = recognizer
        self._min_gap = min_gap

    def __call__(self, images: Any, return_word_box: bool = False) -> tuple[list[Any], float]:
        results, elapsed = self._recognizer(images, True)
        spaced: list[Any] = []
        for image, (text, confidence, word_info) in zip(images, results, strict=True):
            # word_info: [column count (of the unpadded image), words (lists of chars),
            # their columns, states, confs]
            words, word_columns = word_info[1], word_info[2]
            chars = [char for word in words for char in word]
            columns = [column for word in word_columns for column in word]
            if chars != list(text):
                spaced.append((text, confidence))
                continue
            ink = ink_columns(image)
            if ink is None:
                line = space_words(chars, columns, self._min_gap)
            else:
                line = space_words_by_ink(
                    chars, columns, float(word_info[0]), list(ink), int(image.shape[0])
                )
            spaced.append((line, confidence))
        return spaced, elapsed


class _ScaledDetector:
    """Wraps rapidocr's detector: finds the lines on a smaller copy of the page.

    The boxes are scaled back to the page the recogniser crops from, so only
    finding where lines are is done at the lower resolution, not reading them.
    """

    def __init__(self, detector: Any, max_side: int) -> None:
        self._detector = detector
        self._max_side = max_side

    def __call__(self, image: Any) -> tuple[Any, float]:
        import cv2
        import numpy

        height, width = image.shape[:2]
        factor = self._max_side / max(height, width)
        if factor >= 1:
            return self._detector(image)  # type: ignore[no-any-return]
        small = cv2.resize(
            image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA
        )
        boxes, elapsed = self._detector(small)
        if boxes is None:
            return boxes, elapsed
        return (numpy.asarray(boxes) / factor).astype(numpy.float32), elapsed


class RecognisedPageCache:
    """Each recognised page's lines in the cache port, so a redelivered poll resumes.

    One poll reads a whole document's scanned pages; a worker killed on page 9
    would otherwise read pages 1-8 again. Keys name the document, a digest of
    the PDF's bytes (what a processing version's file is; a new upload is a new
    digest), the engine's settings that change what it reads, and the page.
    Lines are stored before the confidence floor, so the floor may change.
    """

    def __init__(self, cache: Cache, document_uuid: str, ttl_seconds: int) -> None:
        self._cache = cache
        self._document_uuid = document_uuid
        self._ttl_seconds = ttl_seconds

    def key(self, data_digest: str, engine: str, page: int) -> str:
        return f"ocr-page:{self._document_uuid}:{data_digest}:{engine}:p{page}"

    def get(self, key: str) -> list[OcrLine] | None:
        raw = self._cache.get(key)
        if raw is None:
            return None
        try:
            return [
                OcrLine(**{**fields, "polygon": tuple(tuple(point) for point in fields["polygon"])})
                for fields in json.loads(raw)
            ]
        except (ValueError, TypeError, KeyError):
            return None  # unreadable (an older layout): read the page again

    def put(self, key: str, lines: Sequence[OcrLine]) -> None:
        fields = [line.__dict__ for line in lines]
        self._cache.set(key, json.dumps(fields), self._ttl_seconds)


@functools.cache
def _rapidocr_version() -> str:
    try:
        return importlib.metadata.version("rapidocr-onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return "absent"


_ENGINE_LOCK = threading.Lock()
_ENGINES: dict[tuple[int, int], Any] = {}


def _rapidocr(min_gap: int, threads: int) -> Any:
    """One RapidOCR per process (loading the ONNX models takes about a second).

    `threads` bounds onnxruntime's threads per model (0: one per core), so an
    OCR worker uses at most concurrency x threads cores and leaves the rest
    to the other queues' workers.
    """
    with _ENGINE_LOCK:
        engine = _ENGINES.get((min_gap, threads))
        if engine is None:
            from rapidocr_onnxruntime import RapidOCR

            options: dict[str, int] = {"rec_batch_num": RECOGNISE_BATCH}
            if threads:
                options |= {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            engine = RapidOCR(**options)
            engine.text_det = _ScaledDetector(engine.text_det, DETECT_MAX_SIDE)
            engine.text_rec = _SpacingRecognizer(engine.text_rec, min_gap)
            _ENGINES[(min_gap, threads)] = engine
        return engine


def build_scan_reader(settings: Settings) -> LocalScanReader | None:
    """The embedded default's reader of scanned pages, or None (extra absent or turned off)."""
    if not settings.ocr_local or not local_ocr_installed():
        return None
    return LocalScanReader(
        min_confidence=settings.textract_min_confidence,
        max_pages=settings.ocr_local_max_pages,
        job_timeout_s=settings.ocr_local_job_timeout_s,
        dpi=settings.ocr_local_dpi,
        threads=settings.ocr_local_threads,
    )


class LocalScanReader:
    """Reads the image-only pages of a PDF with local OCR, within a page and a time limit.

    `max_pages` bounds the pages OCR reads per document and `job_timeout_s` the
    seconds one document's OCR may take (checked between pages); both fail the
    job with a reason that names the setting. `min_confidence` (0-100) is
    Textract's floor: lines below it are dropped and counted.
    """

    def __init__(
        self,
        *,
        min_confidence: float = 80.0,
        max_pages: int = 50,
        job_timeout_s: float = 600.0,
        dpi: int = DEFAULT_DPI,
        word_gap_columns: int = WORD_GAP_COLUMNS,
        threads: int = 1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= min_confidence <= 100:
            raise ValueError("min_confidence must be between 0 and 100")
        if max_pages < 1 or job_timeout_s <= 0 or dpi < 36:
            raise ValueError("max_pages, job_timeout_s and dpi must be positive (dpi >= 36)")
        self.min_confidence = min_confidence
        self.max_pages = max_pages
        self.job_timeout_s = job_timeout_s
        self.dpi = dpi
        self.word_gap_columns = word_gap_columns
        self.threads = threads
        self._monotonic = monotonic

    def engine_key(self) -> str:
        """What, besides the PDF, decides the lines read: the cache keys carry it."""
        return (
            f"{ENGINE_NAME}-{_rapidocr_version()}-dpi{self.dpi}-gap{self.word_gap_columns}"
            f"-det{DETECT_MAX_SIDE}-rec{RECOGNISE_BATCH}-ink{WORD_GAP_LINE_HEIGHTS:g}"
        )

    def read(
        self,
        data: bytes,
        text_layer: Sequence[str],
        page_cache: RecognisedPageCache | None = None,
    ) -> ScanResult:
        """Every page's text: the text layer where it has one, OCR where it has none.

        With `page_cache`, pages an earlier (killed) delivery recognised are taken
        from it and each newly recognised page is put there before the next one.
        """
        import pypdfium2

        scanned = [index for index, text in enumerate(text_layer) if not text.strip()]
        result = ScanResult(pages=list(text_layer))
        if not scanned:
            return result
        if len(scanned) > self.max_pages:
            raise DocumentTooLarge.over_limit(
                f"PDF has {len(scanned):,} page(s) without a text layer to OCR",
                "ocr_local_max_pages",
                self.max_pages,
                "pages",
            )
        started, cpu_started = self._monotonic(), time.process_time()
        data_digest = hashlib.sha256(data).hexdigest()[:16] if page_cache is not None else ""
        try:
            document = pypdfium2.PdfDocument(data)
        except pypdfium2.PdfiumError as exc:
            raise PermanentError(f"cannot render the PDF for OCR ({exc})") from exc
        try:
            for done, index in enumerate(scanned):
                elapsed = self._monotonic() - started
                if elapsed > self.job_timeout_s:
                    raise PermanentError(
                        f"local OCR took longer than ocr_local_job_timeout_s="
                        f"{self.job_timeout_s:g} s ({done} of {len(scanned)} scanned page(s) "
                        "read); raise the setting or split the document"
                    )
                lines = self._page_lines(document, index + 1, page_cache, data_digest, result)
                kept = [line for line in lines if line.confidence >= self.min_confidence]
                result.low_confidence_lines_dropped += len(lines) - len(kept)
                result.lines.extend(kept)
                result.pages[index] = "\n".join(line.text for line in kept)
                result.ocr_pages.append(index + 1)
        finally:
            document.close()
        result.seconds = self._monotonic() - started
        result.cpu_seconds = time.process_time() - cpu_started
        return result

    def _page_lines(
        self,
        document: Any,
        number: int,
        page_cache: RecognisedPageCache | None,
        data_digest: str,
        result: ScanResult,
    ) -> list[OcrLine]:
        """One page's lines: from the page cache when an earlier delivery read it."""
        if page_cache is None:
            return self.recognise_page(document[number - 1], number)
        key = page_cache.key(data_digest, self.engine_key(), number)
        cached = page_cache.get(key)
        if cached is not None:
            result.pages_from_cache += 1
            return cached
        lines = self.recognise_page(document[number - 1], number)
        page_cache.put(key, lines)
        return lines

    def recognise_page(self, page: Any, number: int) -> list[OcrLine]:
        """Render one pypdfium2 page and recognise its lines (all of them, any confidence)."""
        import numpy

        bitmap = page.render(scale=self.dpi / 72)
        image = numpy.asarray(bitmap.to_pil().convert("RGB"))
        return self.recognise_image(image, number)

    def recognise_image(self, image: Any, number: int) -> list[OcrLine]:
        """Lines of an RGB image array (height x width x 3), top to bottom."""
        height, width = image.shape[:2]
        found, _ = _rapidocr(self.word_gap_columns, self.threads)(image)
        lines: list[OcrLine] = []
        for box, text, score in found or []:
            if not str(text).strip():
                continue
            xs = [float(point[0]) / width for point in box]
            ys = [float(point[1]) / height for point in box]
            lines.append(
                OcrLine(
                    page=number,
                    text=str(text).strip(),
                    confidence=round(float(score) * 100, 2),
                    left=min(xs),
                    top=min(ys),
                    width=max(xs) - min(xs),
                    height=max(ys) - min(ys),
                    polygon=tuple(zip(xs, ys, strict=True)),
                )
            )
        return lines


def scan_pdf(data: bytes, *, dpi: int = 200, rotate_degrees: Sequence[float] = ()) -> bytes:
    """An image-only copy of a PDF, as a scanner makes it: grey pages, no text layer.

    `rotate_degrees[i]` turns page i (counter-clockwise) like a sheet fed askew.
    For tests, scenarios and scripts/measure_ocr.py; needs the `[ocr]` extra.
    """
    import io

    import pypdfium2

    document = pypdfium2.PdfDocument(data)
    try:
        images = []
        for index in range(len(document)):
            image = document[index].render(scale=dpi / 72).to_pil().convert("L")
            angle = rotate_degrees[index] if index < len(rotate_degrees) else 0.0
            if angle:
                image = image.rotate(angle, expand=False, fillcolor=255)
            images.append(image)
    finally:
        document.close()
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return out.getvalue()
