"""The local parser with scenario faults in front of it (it has no vendor to fake)."""

from __future__ import annotations

from pipeline.domain.models import ExtractedText, FileType
from pipeline.errors import CorruptDocument
from pipeline.ports import Clock, DocumentParser, FaultInjector


class FaultyDocumentParser:
    """Consults the FaultInjector (port "parser", operation "extract"), then parses for real."""

    def __init__(self, inner: DocumentParser, faults: FaultInjector, clock: Clock) -> None:
        self._inner = inner
        self._faults = faults
        self._clock = clock

    def extract(self, file_type: FileType, data: bytes, document_uuid: str) -> ExtractedText:
        effect = self._faults.before("parser", "extract", document_uuid)
        self._clock.sleep(effect.latency_s)
        if effect.response == "empty":
            return ExtractedText(text="", pages=0, method="injected-empty")
        if effect.response == "malformed":
            raise CorruptDocument("injected malformed content")
        return self._inner.extract(file_type, data, document_uuid)

    def detect_file_type(self, file_name: str, data: bytes) -> FileType:
        return self._inner.detect_file_type(file_name, data)

    def page_count(self, data: bytes) -> int | None:
        return self._inner.page_count(data)
