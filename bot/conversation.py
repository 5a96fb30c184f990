"""Reading a Poe conversation: the topic or follow-up the user sent, and the last meme's draft."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import fastapi_poe as fp
from pydantic import BaseModel, ValidationError

from bot.language import detect_language
from chains.draft import MemeDraft
from chains.meme import PREVIOUS_PICTURE_KEY
from chains.prompts import clean_user_text

MAX_TOPIC_CHARS: Final = 2000
PHOTO_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
METADATA_VERSION: Final = 1

_LANGUAGE_NAMES: Final = {
    "english": "en", "chinese": "zh", "mandarin": "zh", "japanese": "ja", "korean": "ko", "spanish": "es",
    "french": "fr", "german": "de", "italian": "it", "portuguese": "pt", "russian": "ru",
    "中文": "zh", "汉语": "zh", "英文": "en", "英语": "en", "日语": "ja", "日文": "ja", "韩语": "ko",
}  # fmt: skip


class MemeMemory(BaseModel):
    """What travels with a bot message (as `DataResponse` metadata) so a follow-up can refine it."""

    v: int = METADATA_VERSION
    topic: str
    language: str
    draft: MemeDraft
    image_url: str | None = None


@dataclass(frozen=True)
class FollowUp:
    """A recognised refinement: the instruction for the writer, and what to keep."""

    kind: str
    instruction: str
    language: str | None = None


_FOLLOW_UPS: Final[Sequence[tuple[re.Pattern[str], FollowUp]]] = [
    (
        re.compile(r"^(keep|same) (the )?(quote|text|caption)\b|new (picture|image|pic)\b|换(一)?张图|重新画"),
        FollowUp("new_picture", "Keep the quote exactly as it is. Describe a completely new picture for it."),
    ),
    (
        re.compile(r"^(keep|same) (the )?(picture|image|pic)\b|new (quote|caption|text)\b|换(个|一)?(句|文案)"),
        FollowUp("new_quote", "Keep the image description exactly as it is. Write a new, different quote for it."),
    ),
    (
        re.compile(r"(different|another|new|other) (art )?style|style\b.*(different|change)|换(个|一)?(风格|画风)"),
        FollowUp("new_style", "Keep the quote. Describe the same scene in a clearly different art style."),
    ),
    (
        re.compile(r"\bdarker\b|dark(er)? humou?r|更黑暗|黑色幽默"),
        FollowUp("darker", "Make it darker: deadpan, bleak, gallows humour (still no cruelty to real people)."),
    ),
    (
        re.compile(r"wholesome|cuter|nicer|kinder|温馨|可爱一点"),
        FollowUp("wholesome", "Make it wholesome: warm, kind and cute."),
    ),
    (
        re.compile(r"absurd|weirder|crazier|surreal|unhinged|更荒诞|更离谱"),
        FollowUp("absurd", "Make it more absurd and surreal."),
    ),
    (
        re.compile(r"funnier|more funny|更好笑|更搞笑"),
        FollowUp("funnier", "Make it funnier: sharper punchline, more surprise."),
    ),
    (
        re.compile(r"^(another|one more|again|more|another one|next|再来一个|再来|换一个)\b|^(再来一个|再来|换一个)"),
        FollowUp("another", "Write a different meme on the same topic: new joke, new picture."),
    ),
]
_LANGUAGE_REQUEST: Final = re.compile(
    r"^(?:(?:now |make it |say it |write it |translate (?:it )?)?in ([a-z]+)"
    r"|用(中文|汉语|英文|英语|日语|日文|韩语)(?:写|说)?)\W*$"
)


def _recognise(text: str) -> FollowUp | None:
    lowered = text.strip().lower()
    if len(lowered) > 80:
        return None
    if (match := _LANGUAGE_REQUEST.match(lowered)) and (
        code := _LANGUAGE_NAMES.get(match.group(1) or match.group(2) or "")
    ):
        return FollowUp("language", f"Rewrite the quote in the language with code {code}; keep the joke.", code)
    for pattern, follow_up in _FOLLOW_UPS:
        if pattern.search(lowered):
            return follow_up
    return None


def read_memory(query: Sequence[fp.ProtocolMessage]) -> MemeMemory | None:
    """The last meme this bot made in the conversation, from its message metadata."""
    for message in reversed(query[:-1]):
        if message.role == "bot" and message.metadata:
            try:
                return MemeMemory.model_validate(json.loads(message.metadata))
            except (ValueError, ValidationError):
                return None
    return None


@dataclass(frozen=True)
class MemeAsk:
    """What the user asked for in this message."""

    topic: str
    language: str
    follow_up: FollowUp | None = None
    memory: MemeMemory | None = None
    photo: fp.Attachment | None = None
    unusable_attachment: str | None = None
    too_long_by: int = 0
    notes: list[str] = field(default_factory=list)

    def chain_input(self) -> dict[str, Any]:
        """The meme chain's input (the photo chain's, when the user sent a photo)."""
        request: dict[str, Any] = {"topic": self.topic, "language": self.language}
        if self.photo is not None:
            return {
                **request,
                "photo_url": self.photo.url,
                "photo_type": self.photo.content_type,
                "photo_name": self.photo.name,
            }
        if self.follow_up is not None and self.memory is not None:
            request["instruction"] = self.follow_up.instruction
            request["previous_draft"] = self.memory.draft.model_dump_json()
        return request

    def chain_configurable(self) -> dict[str, Any]:
        """Run-time choices this message implies: keeping the last picture reuses it instead of drawing."""
        memory, follow_up = self.memory, self.follow_up
        if follow_up is not None and follow_up.kind == "new_quote" and memory is not None and memory.image_url:
            return {"image_step": "previous", PREVIOUS_PICTURE_KEY: memory.image_url}
        return {}

    def remember(self, draft: MemeDraft, image_url: str | None) -> str:
        """The metadata to send with the reply."""
        return MemeMemory(topic=self.topic, language=self.language, draft=draft, image_url=image_url).model_dump_json()


def read_ask(request: fp.QueryRequest) -> MemeAsk:
    """Turn the last user message (and the conversation before it) into a meme request."""
    last = request.query[-1] if request.query else fp.ProtocolMessage(role="user", content="")
    text = clean_user_text(last.content, limit=len(last.content))  # no control, format or bidi characters
    photo = next((a for a in last.attachments if a.content_type in PHOTO_TYPES), None)
    unusable = next((a.content_type for a in last.attachments if a.content_type not in PHOTO_TYPES), None)
    memory = read_memory(request.query)
    follow_up = _recognise(text) if memory is not None and not photo else None
    if follow_up is not None and memory is not None:
        language = follow_up.language or memory.language
        return MemeAsk(topic=memory.topic, language=language, follow_up=follow_up, memory=memory)
    language = detect_language(text, request.language_code)
    too_long_by = max(0, len(text) - MAX_TOPIC_CHARS)
    return MemeAsk(
        topic=text,
        language=language,
        memory=memory,
        photo=photo,
        unusable_attachment=unusable if photo is None else None,
        too_long_by=too_long_by,
    )
