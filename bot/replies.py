"""What the user reads: the reply's layout, the suggested replies, and errors in plain words."""

from __future__ import annotations

from typing import Final

from langchain_core.exceptions import OutputParserException

from bot.markdown import plain, quote_block
from chains.errors import PoeAuthError, PoeError, PoeNoImage, PoeRateLimited, PoeTimeout

WRITING: Final = "✍️ Writing your meme…"
SUGGESTED_REPLIES: Final = ("Another one", "Make it darker", "Make it wholesome", "Different art style")


def progress_text(quote: str | None, status: str) -> str:
    """The reply while the meme is being made: the quote so far, then a status line."""
    parts = [quote_block(quote)] if quote and quote.strip() else []
    parts.append(f"_{status}_")
    return "\n\n".join(parts)


def writing_status(text_bot: str, seconds: float) -> str:
    """The status while the writer works; the seconds show the wait is alive even when nothing else changes."""
    return f"✍️ {text_bot} is writing your meme… {int(seconds)}s"


def drawing_status(image_bot: str, seconds: float) -> str:
    return f"🎨 Drawing with {image_bot}… {int(seconds)}s"


def final_text(quote: str, image_ref: str | None, alt: str) -> str:
    """The finished reply: the quote as text (to copy, and for screen readers), then the picture inline."""
    parts = [quote_block(quote)]
    if image_ref:
        # Cut before escaping, so a cut never splits an escape and unbalances the brackets.
        parts.append(f"![{plain(' '.join(alt.split())[:120])}][{image_ref}]")
    return "\n\n".join(parts)


def explain(error: BaseException) -> tuple[str, bool]:
    """A failure in words a person understands, and whether retrying may help."""
    bot = getattr(error, "bot_name", "") or "the bot"
    if isinstance(error, PoeRateLimited):
        return f"{bot} is getting too many requests right now. Please try again in a minute.", True
    if isinstance(error, PoeTimeout):
        return f"{bot} took too long to answer. Please try again.", True
    if isinstance(error, PoeAuthError):
        return "This bot is not set up correctly (Poe refused its key). Its owner needs to fix it.", False
    if isinstance(error, PoeNoImage):
        return f"{bot} answered without a picture. Please try again, or pick another image bot.", True
    if isinstance(error, PoeError):
        return f"{bot} ran into a problem. Please try again in a moment.", True
    if isinstance(error, TimeoutError):
        return "Making your meme took too long. Please try again.", True
    if isinstance(error, OutputParserException):
        return "The writer bot's answer could not be turned into a meme. Please try again.", True
    return "Something went wrong while making your meme. Please try again.", True
