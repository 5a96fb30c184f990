"""Meme this photo: a vision-capable Poe text bot writes about the user's picture, which then gets the caption.

No image bot is called: the picture is the user's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from functools import cache
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.language_models import BaseChatModel
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import (
    RunnableConfig,
    RunnableLambda,
    RunnablePassthrough,
    RunnableSequence,
    RunnableSerializable,
)

from chains.caption import OutputFormat
from chains.chat_poe import DEFAULT_TEXT_BOT
from chains.draft import MemeDraft, MemeDraftParser, PartialMemeDraft
from chains.image_poe import GeneratedImage
from chains.meme import Meme, MemeProgress, MemeStep, caption_step, writer_model
from chains.prompts import clean_user_text, prompt_text

PHOTO_SOURCE = "user photo"


@cache
def photo_prompt(format_instructions: str) -> ChatPromptTemplate:
    """The photo prompt: the hint and language as text, the photo as an image block."""
    return ChatPromptTemplate.from_messages(
        [
            ("system", prompt_text("photo_system.txt")),
            (
                "human",
                [
                    {"type": "text", "text": prompt_text("photo_human.txt")},
                    {"type": "image_url", "image_url": {"url": "{photo_url}"}},
                ],
            ),
        ]
    ).partial(format_instructions=format_instructions)


def photo_inputs(request: Mapping[str, Any]) -> dict[str, Any]:
    """Prompt variables and the photo's details from a request: photo_url (required), photo_type, topic."""
    url = str(request.get("photo_url") or "")
    if not url.startswith(("http://", "https://")):
        raise ValueError("the photo needs an http(s) URL")
    return {
        "topic": clean_user_text(str(request.get("topic") or "")) or "(no hint)",
        "language": str(request.get("language") or "en"),
        "photo_url": url,
        "photo_type": str(request.get("photo_type") or "image/jpeg"),
        "photo_name": str(request.get("photo_name") or "photo"),
    }


def _photo(request: Mapping[str, Any]) -> GeneratedImage:
    return GeneratedImage(
        url=request["photo_url"],
        content_type=request["photo_type"],
        name=request["photo_name"],
        bot_name=PHOTO_SOURCE,
    )


class PhotoFramer(RunnableSerializable[dict[str, Any], MemeStep]):
    """Turns the writer's streaming draft about a photo into meme progress, and finally a Meme of that photo."""

    name: str | None = "PhotoFramer"

    def invoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> MemeStep:
        return self._call_with_config(self._frame, input, config)

    async def ainvoke(self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any) -> MemeStep:
        return self.invoke(input, config)

    def _frame(self, request: dict[str, Any], run_manager: CallbackManagerForChainRun) -> MemeStep:
        draft = request["draft"]
        final = draft if isinstance(draft, MemeDraft) else MemeDraft.model_validate(draft.model_dump())
        return Meme(draft=final, image=_photo(request))

    async def atransform(
        self, input: AsyncIterator[dict[str, Any]], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[MemeStep]:
        async for step in self._atransform_stream_with_config(input, self._stream, config):
            yield step

    async def _stream(
        self, chunks: AsyncIterator[dict[str, Any]], run_manager: AsyncCallbackManagerForChainRun
    ) -> AsyncIterator[MemeStep]:
        # RunnablePassthrough.assign streams the request first, then the draft as it grows.
        request: dict[str, Any] = {}
        last: MemeDraft | PartialMemeDraft | None = None
        async for chunk in chunks:
            request.update(chunk)
            if (draft := chunk.get("draft")) is not None:
                last = draft
                if isinstance(draft, PartialMemeDraft):
                    yield MemeProgress(draft=draft)
        if not isinstance(last, MemeDraft):
            raise ValueError("the photo draft stream ended without a finished draft")
        yield Meme(draft=last, image=_photo(request))


def build_photo_chain(
    *,
    text_bot: str = DEFAULT_TEXT_BOT,
    caption: bool = True,
    caption_format: OutputFormat = "jpeg",
    text_timeout_s: float = 60.0,
    max_retries: int = 2,
    poe_url: str | None = None,
    api_key: str | None = None,
    chat_models: Mapping[str, BaseChatModel] | None = None,
) -> RunnableSequence[Any, MemeStep]:
    """{"photo_url", "photo_type", "topic", "language"} -> MemeProgress..., then a Meme captioning that photo."""
    parser = MemeDraftParser()
    model = writer_model(
        text_bot=text_bot,
        text_timeout_s=text_timeout_s,
        max_retries=max_retries,
        poe_url=poe_url,
        api_key=api_key,
        chat_models=chat_models,
    )
    writer = photo_prompt(parser.get_format_instructions()) | model | parser
    return RunnableSequence(
        RunnableLambda(photo_inputs, name="PhotoRequest"),
        RunnablePassthrough.assign(draft=writer),
        PhotoFramer(),
        caption_step(caption, caption_format),
        name="PhotoMemeChain",
    )
