"""A bounded in-memory file store (LRU by count and bytes) and MIME sniffing."""

from __future__ import annotations

import mimetypes
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_MAX_FILES = 256
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"BM", "image/bmp"),
)


def sniff_mime(data: bytes, filename: str = "") -> str:
    """The MIME type of `data`: magic bytes first, then the file name's extension, then text or binary."""
    for signature, mime in _SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(filename) if filename else (None, None)
    if guessed:
        return guessed
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sample's end is still text.
        if exc.start < 4090:
            return "application/octet-stream"
    return "text/plain"


def safe_name(name: str) -> str:
    """A file name fit for a URL path segment: no directories, never empty."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base or "file"


@dataclass(frozen=True)
class StoredFile:
    """One stored file."""

    file_id: str
    name: str
    content_type: str
    data: bytes

    def url(self, base_url: str) -> str:
        """Absolute URL of this file under the platform root `base_url` (ending in '/')."""
        return f"{base_url}files/{self.file_id}/{quote(self.name, safe='')}"


class FileStore:
    """Keeps the newest files within a count and a byte budget; the least recently used go first."""

    def __init__(self, max_files: int = DEFAULT_MAX_FILES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, data: bytes, name: str, content_type: str | None = None) -> StoredFile:
        """Store `data` under a fresh unguessable id and return it; evicts the oldest beyond the budget."""
        clean = safe_name(name)
        stored = StoredFile(secrets.token_urlsafe(12), clean, content_type or sniff_mime(data, clean), data)
        with self._lock:
            self._files[stored.file_id] = stored
            self._bytes += len(data)
            while self._files and (len(self._files) > self.max_files or self._bytes > self.max_bytes):
                _, evicted = self._files.popitem(last=False)
                self._bytes -= len(evicted.data)
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """The file with this id, or None when unknown or evicted."""
        with self._lock:
            stored = self._files.get(file_id)
            if stored is not None:
                self._files.move_to_end(file_id)
            return stored

    def clear(self) -> None:
        """Forget every file."""
        with self._lock:
            self._files.clear()
            self._bytes = 0

    @property
    def count(self) -> int:
        """Number of files held."""
        return len(self._files)

    @property
    def total_bytes(self) -> int:
        """Bytes held."""
        return self._bytes
