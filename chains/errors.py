"""The few errors that cross the boundary to Poe; everything inside the project speaks only these."""

from __future__ import annotations


class PoeError(Exception):
    """A call to a Poe bot failed."""

    retryable: bool = False

    def __init__(self, message: str, *, bot_name: str = "") -> None:
        super().__init__(message)
        self.bot_name = bot_name


class PoeAuthError(PoeError):
    """Poe refused the key: check POE_API_KEY (CLI) or POE_ACCESS_KEY (server)."""


class PoeRateLimited(PoeError):
    """The Poe bot is rate limited; trying again in a moment usually works."""

    retryable = True


class PoeBotError(PoeError):
    """The Poe bot answered with an error or broke off its answer."""

    def __init__(self, message: str, *, bot_name: str = "", retryable: bool = True) -> None:
        super().__init__(message, bot_name=bot_name)
        self.retryable = retryable


class PoeTimeout(PoeError):
    """The Poe bot did not answer within its time limit."""

    retryable = True


class PoeNoImage(PoeBotError):
    """The image bot answered without a picture."""
