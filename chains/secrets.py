"""Keeping keys out of everything a person or a trace can see."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Final

_KEY_ENV_VARS: Final = ("POE_ACCESS_KEY", "POE_API_KEY", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")
_MIN_SECRET_LENGTH: Final = 8
MASK: Final = "[redacted]"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Text with every occurrence of each secret replaced by a mask."""
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, MASK)
    return text


def secrets_from_env() -> tuple[str, ...]:
    """The keys this process holds in its environment."""
    return tuple(v for name in _KEY_ENV_VARS if (v := os.environ.get(name)))


class RedactingFilter(logging.Filter):
    """A logging filter that masks the given keys in every record's final message."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        return True


def install_log_redaction(extra: Iterable[str] = ()) -> RedactingFilter:
    """Mask this process's keys in every log line, whichever handler writes it."""
    redacting = RedactingFilter((*secrets_from_env(), *extra))
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(redacting)
    root.addFilter(redacting)
    return redacting
