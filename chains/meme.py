"""The meme chain: prompt | ChatPoe | MemeDraftParser | Illustrator | CaptionOverlay, a RunnableSequence."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import (
    ConfigurableField,
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableSequence,
    RunnableSerializable,
)
from langchain_core.runnables.config import patch_config
from pydantic import BaseModel, ConfigDict, Field

from chains.caption import OutputFormat, render_meme
from chains.chat_poe import DEFAULT_TEXT_BOT, ChatPoe
from chains.draft import MemeDraft, MemeDraftParser, PartialMemeDraft
from chains.errors import PoeNoImage
from chains.image_poe import DEFAULT_IMAGE_BOT, GeneratedImage, PoeImageGenerator
from chains.prompts import PROMPT_VARIANTS, meme_prompt, prompt_inputs
from chains.sync_bridge import run_sync


class MemeProgress(BaseModel):
    """A snapshot while the meme is being made: the draft so far, and whether the picture is being drawn."""

    draft: PartialMemeDraft
    drawing: bool = False
    elapsed_s: float = 0.0


class Meme(BaseModel):
    """A finished meme: the draft, the picture the image bot drew and, if captioned, the final picture."""

    draft: MemeDraft
    image: GeneratedImage
    picture: bytes | None = Field(default=None, repr=False)
    picture_type: str | None = None
    picture_name: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @property
    def quote(self) -> str:
        return self.draft.quote

    @property
    def image_prompt(self) -> str:
        return self.draft.image_prompt


MemeStep = MemeProgress | Meme


def _as_partial(draft: MemeDraft | PartialMemeDraft) -> PartialMemeDraft:
    if isinstance(draft, PartialMemeDraft):
        return draft
    return PartialMemeDraft(
        image_prompt=draft.image_prompt, quote=draft.quote, image_prompt_complete=True, quote_complete=True
    )


class Illustrator(RunnableSerializable[MemeDraft | PartialMemeDraft, MemeStep]):
    """Starts the image bot the moment the draft's image prompt is complete, while the quote still streams."""

    image_step: Runnable[str, GeneratedImage]
    name: str | None = "Illustrator"

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def invoke(
        self, input: MemeDraft | PartialMemeDraft, config: RunnableConfig | None = None, **kwargs: Any
    ) -> MemeStep:
        return self._call_with_config(self._invoke, input, config)

    def _invoke(
        self, draft: MemeDraft | PartialMemeDraft, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> MemeStep:
        final = _final_draft(draft)
        start = time.perf_counter()
        image = self.image_step.invoke(final.image_prompt, config)
        return Meme(draft=final, image=image, timings={"image_s": time.perf_counter() - start})

    async def ainvoke(
        self, input: MemeDraft | PartialMemeDraft, config: RunnableConfig | None = None, **kwargs: Any
    ) -> MemeStep:
        return await self._acall_with_config(self._ainvoke, input, config)

    async def _ainvoke(
        self,
        draft: MemeDraft | PartialMemeDraft,
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> MemeStep:
        final = _final_draft(draft)
        start = time.perf_counter()
        image = await self.image_step.ainvoke(final.image_prompt, config)
        return Meme(draft=final, image=image, timings={"image_s": time.perf_counter() - start})

    async def atransform(
        self,
        input: AsyncIterator[MemeDraft | PartialMemeDraft],
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[MemeStep]:
        async for step in self._atransform_stream_with_config(input, self._illustrate, config):
            yield step

    async def _illustrate(
        self,
        drafts: AsyncIterator[MemeDraft | PartialMemeDraft],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[MemeStep]:
        start = time.perf_counter()
        timings: dict[str, float] = {}
        image_task: asyncio.Task[GeneratedImage] | None = None

        def start_drawing(prompt: str) -> asyncio.Task[GeneratedImage]:
            timings["image_prompt_s"] = time.perf_counter() - start
            child = patch_config(config, callbacks=run_manager.get_child())
            return asyncio.create_task(self.image_step.ainvoke(prompt, child))

        last: MemeDraft | PartialMemeDraft | None = None
        try:
            async for draft in drafts:
                last = draft
                partial = _as_partial(draft)
                if "first_draft_s" not in timings:
                    timings["first_draft_s"] = time.perf_counter() - start
                if image_task is None and partial.image_prompt_complete and partial.image_prompt:
                    image_task = start_drawing(partial.image_prompt)
                yield MemeProgress(draft=partial, drawing=image_task is not None, elapsed_s=time.perf_counter() - start)
            if last is None:
                raise ValueError("the draft stream was empty")
            final = _final_draft(last)
            timings["draft_s"] = time.perf_counter() - start
            if image_task is None:
                image_task = start_drawing(final.image_prompt)
            image = await image_task
            timings["image_s"] = time.perf_counter() - start
            yield Meme(draft=final, image=image, timings=timings)
        finally:
            if image_task is not None and not image_task.done():
                image_task.cancel()
                with contextlib.suppress(BaseException):
                    await image_task


def _final_draft(draft: MemeDraft | PartialMemeDraft) -> MemeDraft:
    if isinstance(draft, MemeDraft):
        return draft
    return MemeDraft(image_prompt=draft.image_prompt or "", quote=draft.quote or "")


class CaptionOverlay(RunnableSerializable[MemeStep, MemeStep]):
    """Draws the quote onto the finished picture (off the event loop); passes progress through untouched."""

    enabled: bool = True
    output_format: OutputFormat = "jpeg"
    language: str | None = None
    """The quote's language, which picks the CJK glyph forms (Chinese or Japanese); scripts are detected anyway."""
    name: str | None = "CaptionOverlay"

    async def _caption(self, meme: Meme) -> Meme:
        if not self.enabled:
            return meme
        start = time.perf_counter()
        data = await meme.image.aread()
        rendered = await asyncio.to_thread(
            render_meme, data, meme.draft.quote, language=self.language, output_format=self.output_format
        )
        timings = {**meme.timings, "caption_s": time.perf_counter() - start}
        return meme.model_copy(
            update={
                "picture": rendered.data,
                "picture_type": rendered.content_type,
                "picture_name": f"meme{rendered.suffix}",
                "timings": timings,
            }
        )

    def invoke(self, input: MemeStep, config: RunnableConfig | None = None, **kwargs: Any) -> MemeStep:
        return self._call_with_config(lambda step: run_sync(self._step(step)), input, config)

    async def ainvoke(self, input: MemeStep, config: RunnableConfig | None = None, **kwargs: Any) -> MemeStep:
        return await self._acall_with_config(self._step, input, config)

    async def _step(self, step: MemeStep) -> MemeStep:
        return await self._caption(step) if isinstance(step, Meme) else step

    async def atransform(
        self, input: AsyncIterator[MemeStep], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[MemeStep]:
        async for step in self._atransform_stream_with_config(input, self._pass_through, config):
            yield step

    async def _pass_through(self, steps: AsyncIterator[MemeStep]) -> AsyncIterator[MemeStep]:
        async for step in steps:
            yield await self._step(step)

    def transform(
        self, input: Iterator[MemeStep], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[MemeStep]:
        for step in input:
            yield self.invoke(step, config)


PREVIOUS_PICTURE_KEY = "previous_picture_url"
"""`configurable` key: with `image_step="previous"`, the picture to reuse instead of drawing a new one."""


def _previous_picture(prompt: str, config: RunnableConfig) -> GeneratedImage:
    url = config.get("configurable", {}).get(PREVIOUS_PICTURE_KEY)
    if not url:
        raise PoeNoImage("there is no previous picture to keep", bot_name="previous meme")
    return GeneratedImage(url=url, bot_name="previous meme", prompt=prompt)


async def _aprompt_inputs(request: dict[str, Any] | str) -> dict[str, str]:
    return prompt_inputs(request)


def _alternatives(options: Mapping[str, Runnable[Any, Any]] | None) -> dict[str, Any]:
    return dict(options or {})


def writer_model(
    *,
    text_bot: str = DEFAULT_TEXT_BOT,
    text_timeout_s: float = 60.0,
    max_retries: int = 2,
    poe_url: str | None = None,
    api_key: str | None = None,
    chat_models: Mapping[str, BaseChatModel] | None = None,
) -> Runnable[Any, Any]:
    """ChatPoe for the writer, with `text_bot`, `temperature` and `chat_model` swappable at run time."""
    keys: dict[str, Any] = {"api_key": api_key} if api_key else {}
    chat = ChatPoe(
        model=text_bot, timeout=text_timeout_s, max_retries=max_retries, poe_url=poe_url, **keys
    ).configurable_fields(
        model_name=ConfigurableField(id="text_bot", name="Text bot", description="Poe bot that writes the meme"),
        temperature=ConfigurableField(id="temperature", name="Temperature"),
    )
    return chat.configurable_alternatives(
        ConfigurableField(id="chat_model", name="Chat model"), default_key="poe", **_alternatives(chat_models)
    )


def caption_step(caption: bool = True, caption_format: OutputFormat = "jpeg") -> Runnable[MemeStep, MemeStep]:
    """The caption overlay, switchable at run time with `caption_overlay` (and `caption_language`)."""
    return CaptionOverlay(enabled=caption, output_format=caption_format).configurable_fields(
        enabled=ConfigurableField(id="caption_overlay", name="Caption overlay"),
        language=ConfigurableField(id="caption_language", name="Caption language"),
    )


def build_meme_chain(
    *,
    text_bot: str = DEFAULT_TEXT_BOT,
    image_bot: str = DEFAULT_IMAGE_BOT,
    fallback_image_bot: str | None = None,
    caption: bool = True,
    caption_format: OutputFormat = "jpeg",
    prompt_variant: str = "v1",
    text_timeout_s: float = 60.0,
    image_timeout_s: float = 90.0,
    max_retries: int = 2,
    poe_url: str | None = None,
    api_key: str | None = None,
    chat_models: Mapping[str, BaseChatModel] | None = None,
    image_steps: Mapping[str, Runnable[str, GeneratedImage]] | None = None,
) -> RunnableSequence[Any, MemeStep]:
    """The meme chain: topic (or a dict request) -> stream of `MemeProgress`, ending with a `Meme`.

    Swappable at run time through `with_config(configurable=...)`: `text_bot`, `image_bot`, `aspect_ratio`,
    `caption_overlay`, `prompt_variant` ("v1", "v2"), `chat_model` (any key of `chat_models`, default "poe")
    and `image_step` (any key of `image_steps`, default "poe"; "previous" reuses the picture at
    `configurable["previous_picture_url"]`, to keep a picture and change only its quote).
    """
    parser = MemeDraftParser()
    instructions = parser.get_format_instructions()
    prompt = meme_prompt(prompt_variant, instructions).configurable_alternatives(
        ConfigurableField(id="prompt_variant", name="Prompt variant"),
        default_key=prompt_variant,
        **_alternatives({v: meme_prompt(v, instructions) for v in PROMPT_VARIANTS if v != prompt_variant}),
    )
    keys: dict[str, Any] = {"api_key": api_key} if api_key else {}
    model = writer_model(
        text_bot=text_bot,
        text_timeout_s=text_timeout_s,
        max_retries=max_retries,
        poe_url=poe_url,
        api_key=api_key,
        chat_models=chat_models,
    )
    # With a fallback, the image step as a whole still keeps to image_timeout_s: the first bot gets most of it.
    first_share = 0.65 if fallback_image_bot else 1.0
    painter = PoeImageGenerator(
        bot_name=image_bot, timeout=image_timeout_s * first_share, max_retries=max_retries, poe_url=poe_url, **keys
    )
    image: RunnableSerializable[str, GeneratedImage] = painter.configurable_fields(
        bot_name=ConfigurableField(id="image_bot", name="Image bot", description="Poe bot that draws the picture"),
        aspect_ratio=ConfigurableField(id="aspect_ratio", name="Aspect ratio"),
    )
    if fallback_image_bot:
        rest = image_timeout_s * (1 - first_share)
        fallback = painter.model_copy(update={"bot_name": fallback_image_bot, "timeout": rest}).configurable_fields(
            aspect_ratio=ConfigurableField(id="aspect_ratio", name="Aspect ratio")
        )
        image = image.with_fallbacks([fallback])
    image = image.configurable_alternatives(
        ConfigurableField(id="image_step", name="Image step"),
        default_key="poe",
        previous=RunnableLambda(_previous_picture, name="PreviousPicture"),
        **_alternatives(image_steps),
    )
    # The async twin keeps LangChain from running this sync function in a worker thread on every astream().
    inputs = RunnableLambda(prompt_inputs, afunc=_aprompt_inputs, name="MemeRequest")
    return RunnableSequence(
        inputs,
        prompt,
        model,
        parser,
        Illustrator(image_step=image),
        caption_step(caption, caption_format),
        name="MemeChain",
    )
