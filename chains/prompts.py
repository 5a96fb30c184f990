"""The meme prompt: texts live in prompts/, assembled here into ChatPromptTemplates."""

from __future__ import annotations

import json
import re
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any, Final

from langchain_core.prompts import ChatPromptTemplate

PROMPT_VARIANTS: Final = ("v1", "v2")
MAX_TOPIC_CHARS: Final = 2000
_DELIMITER_TAGS = re.compile(r"</?\s*(topic|language|instruction|previous_draft)\s*>", re.IGNORECASE)


PROMPTS_DIR: Final = Path(__file__).resolve().parent.parent / "prompts"
"""prompts/ beside chains/, in the checkout and in the Modal image alike."""


def prompt_text(name: str) -> str:
    """One text file from prompts/."""
    return (PROMPTS_DIR / name).read_text(encoding="utf-8")


@cache
def meme_prompt(variant: str = "v1", format_instructions: str = "") -> ChatPromptTemplate:
    """The meme prompt for a variant, with the parser's format instructions filled in."""
    if variant not in PROMPT_VARIANTS:
        raise ValueError(f"unknown prompt variant {variant!r}; choose from {', '.join(PROMPT_VARIANTS)}")
    template = ChatPromptTemplate.from_messages(
        [("system", prompt_text(f"meme_system_{variant}.txt")), ("human", prompt_text("meme_human.txt"))]
    )
    return template.partial(format_instructions=format_instructions)


def clean_user_text(text: str, limit: int = MAX_TOPIC_CHARS) -> str:
    """User text made safe to place inside the prompt's delimiters: no control or bidi characters, no tags."""
    kept = "".join(ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf") else " " for ch in text)
    kept = _DELIMITER_TAGS.sub(" ", kept)
    kept = re.sub(r"[ \t]+", " ", kept).strip()
    return kept[:limit].rstrip()


def prompt_inputs(request: dict[str, Any] | str) -> dict[str, str]:
    """The prompt's variables from a meme request: a topic, or a dict with topic, language, style, refinement."""
    if isinstance(request, str):
        request = {"topic": request}
    topic = clean_user_text(str(request.get("topic", "")))
    if not topic:
        raise ValueError("the topic is empty")
    refinement = ""
    instruction = request.get("instruction")
    previous = request.get("previous_draft")
    if instruction and previous:
        refinement = prompt_text("meme_refinement.txt").format(
            previous_draft=previous if isinstance(previous, str) else _json(previous),
            instruction=clean_user_text(str(instruction), 500),
        )
    style = clean_user_text(str(request.get("style") or ""), 60)
    return {
        "topic": topic,
        "language": str(request.get("language") or "en"),
        "style": prompt_text("meme_style.txt").rstrip("\n").format(style=style) if style else "",
        "refinement": refinement,
    }


def _json(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    return json.dumps(value, ensure_ascii=False)
