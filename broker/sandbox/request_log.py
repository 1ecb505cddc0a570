"""RequestLog: the last requests the sandbox received, as they came off the wire."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

REQUESTS_KEPT = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    method: str
    raw_path: str  # path and query exactly as received, encoding untouched
    headers: tuple[tuple[str, str], ...]  # every field, duplicates kept, in order
    body: str

    @classmethod
    def capture(
        cls,
        method: str,
        raw_path: str,
        raw_headers: tuple[tuple[bytes, bytes], ...],
        body: bytes,
    ) -> RecordedRequest:
        return cls(
            method=method,
            raw_path=raw_path,
            headers=tuple((_text(name), _text(value)) for name, value in raw_headers),
            body=_text(body),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "raw_path": self.raw_path,
            "headers": [list(pair) for pair in self.headers],
            "body": self.body,
        }


class RequestLog:
    def __init__(self, *, capacity: int = REQUESTS_KEPT) -> None:
        self._entries: deque[RecordedRequest] = deque(maxlen=capacity)

    def append(self, entry: RecordedRequest) -> None:
        self._entries.append(entry)

    def recent(self, limit: int) -> list[RecordedRequest]:
        """Up to *limit* of the newest entries, oldest first."""
        if limit <= 0:
            return []
        return list(self._entries)[-limit:]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")
