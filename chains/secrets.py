"""Keeping keys out of everything a person or a trace can see."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
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


_log_secrets: set[str] = set()
_base_record_factory: Callable[..., logging.LogRecord] | None = None


def _redacting_record_factory(*args: object, **kwargs: object) -> logging.LogRecord:
    assert _base_record_factory is not None
    record = _base_record_factory(*args, **kwargs)
    message = record.getMessage()
    cleaned = redact(message, _log_secrets)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters use a ready exc_text as it is: make it the redacted traceback.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info), _log_secrets)
    return record


def install_log_redaction(extra: Iterable[str] = ()) -> None:
    """Mask this process's keys in every log record, whichever logger makes it and whichever handler writes it.

    A record factory sees every record as it is made (libraries log URLs that carry keys: Poe's settings sync
    puts the access key in the path), so no handler added later can miss it.
    """
    global _base_record_factory
    _log_secrets.update(s for s in (*secrets_from_env(), *extra) if s and len(s) >= _MIN_SECRET_LENGTH)
    if _base_record_factory is None:
        _base_record_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacting_record_factory)
