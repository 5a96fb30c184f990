"""MemeBot: a Poe server bot that turns any topic into a meme. `uvicorn server:app` serves it."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, TypeAlias, cast

import fastapi_poe as fp
from fastapi import FastAPI
from langchain_core.exceptions import OutputParserException
from langchain_core.runnables import RunnableConfig

from bot.config import BotConfig, ConfigError
from bot.controls import IMAGE_BOTS, TEXT_BOTS, VISION_BOTS, Choices, parameter_controls, read_choices
from bot.conversation import MemeAsk, read_ask
from bot.protocol_guard import install_protocol_guard
from bot.replies import (
    SUGGESTED_REPLIES,
    WRITING,
    drawing_status,
    explain,
    final_text,
    progress_text,
    writing_status,
)
from chains.errors import PoeBotError
from chains.meme import Meme, MemeProgress, build_meme_chain
from chains.photo import build_photo_chain
from chains.poe_client import POE_REQUEST_KEY, PoeEndpoints, close_shared_http_client, upload_attachment
from chains.secrets import install_log_redaction
from chains.streaming import TICK, in_background
from chains.tracing import tracing_callbacks

logger = logging.getLogger("memebot")
Reply: TypeAlias = fp.PartialResponse | fp.DataResponse
_open_replies: contextvars.ContextVar[list[AsyncGenerator[Reply, None]] | None] = contextvars.ContextVar(
    "memebot_open_replies", default=None
)

INTRODUCTION = (
    "Send me any topic — *Monday mornings*, *my cat vs. the keyboard*, *周一早上* — and I'll write a meme "
    "quote and draw the picture for it. Or send a photo and I'll caption it.\n\nThen ask for *another one*, "
    "*make it darker*, *in Chinese* or *different art style*."
)
TICK_S = 0.25
"""How often the reply checks for a status to refresh while nothing else happens."""
REPLACE_EVERY_S = 0.1
"""At most one replace per this long while the quote streams: each carries the whole text, and the eye cannot
tell the difference; the finished quote goes out at once."""


MEME_ROUNDS = 2
"""A meme whose draft came back unreadable, or whose bot broke off mid-answer, is made once more from scratch
(what was shown is replaced); `server_bot_dependencies` counts both rounds."""
SECOND_ROUND_WITHIN_S = 40.0
"""No second round after this long."""
REPLY_BUDGET_S = 110.0
"""The whole reply, both rounds included, ends within this: Poe allows 120 s."""


def _worth_another_round(error: BaseException) -> bool:
    # Retries inside a round happen only before any text arrives; these failures come after, or are the
    # draft itself being unusable. Time-outs and refusals of the key would only repeat.
    if isinstance(error, OutputParserException):
        return True
    return isinstance(error, PoeBotError) and error.retryable


@dataclass
class MemeBot(fp.PoeBot):
    """Poe request -> meme chain -> Poe events."""

    config: BotConfig = field(default_factory=BotConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.endpoints = PoeEndpoints.from_root(self.config.poe_url)
        self.photo_chain = build_photo_chain(
            text_bot=self.config.vision_bot,
            caption=self.config.caption_overlay,
            text_timeout_s=self.config.text_timeout_s,
            max_retries=self.config.max_retries,
            poe_url=self.config.poe_url,
        )
        self.chain = build_meme_chain(
            text_bot=self.config.text_bot,
            image_bot=self.config.image_bot,
            fallback_image_bot=self.config.fallback_image_bot,
            caption=self.config.caption_overlay,
            text_timeout_s=self.config.text_timeout_s,
            image_timeout_s=self.config.image_timeout_s,
            max_retries=self.config.max_retries,
            poe_url=self.config.poe_url,
        )

    def server_bot_dependencies(self) -> dict[str, int]:
        """The most calls one message can make to each bot a user can pick, retries and both rounds included.

        Each round asks the text bot once and the image bot once, each with its retries; the fallback image bot
        may be tried in both rounds as well.
        """
        calls = MEME_ROUNDS * (self.config.max_retries + 1)
        text_bots = dict.fromkeys((self.config.text_bot, self.config.vision_bot, *TEXT_BOTS), calls)
        image_bots = dict.fromkeys((self.config.image_bot, *IMAGE_BOTS), calls)
        if fallback := self.config.fallback_image_bot:
            image_bots[fallback] = image_bots.get(fallback, 0) + calls
        dependencies = dict(text_bots)
        for bot, count in image_bots.items():
            dependencies[bot] = dependencies.get(bot, 0) + count
        return dependencies

    async def get_settings(self, setting: fp.SettingsRequest) -> fp.SettingsResponse:
        return fp.SettingsResponse(
            server_bot_dependencies=self.server_bot_dependencies(),
            introduction_message=INTRODUCTION,
            allow_attachments=True,  # photos become memes of themselves
            parameter_controls=parameter_controls(
                text_bot=self.config.text_bot, image_bot=self.config.image_bot, caption=self.config.caption_overlay
            ),
        )

    async def handle_query(self, request: fp.QueryRequest, context: fp.RequestContext) -> AsyncIterator[Any]:
        # When Poe hangs up, sse_starlette closes this generator at a `yield`; fastapi_poe's `async for` then
        # leaves our reply generator suspended until garbage collection, with its upstream calls still running.
        # Closing the reply here cancels them at once.
        replies: list[AsyncGenerator[Reply, None]] = []
        _open_replies.set(replies)
        events = super().handle_query(request, context)
        try:
            async for event in events:
                yield event
        finally:
            await cast(AsyncGenerator[Any, None], events).aclose()
            for reply in replies:
                await reply.aclose()

    def get_response_with_context(
        self, request: fp.QueryRequest, context: fp.RequestContext
    ) -> AsyncGenerator[Reply, None]:
        reply = self.get_response(request)
        if (replies := _open_replies.get()) is not None:
            replies.append(reply)
        return reply

    async def get_response(self, request: fp.QueryRequest) -> AsyncGenerator[Reply, None]:
        try:
            async for event in self._respond(request):
                yield event
        except fp.InsufficientFundError:
            yield fp.ErrorResponse(error_type="insufficient_fund", text="")
        finally:
            # When Poe goes away mid-reply, an uploaded picture's queued event must not stay behind forever.
            self._file_events_to_yield.pop(request.message_id, None)

    async def _respond(self, request: fp.QueryRequest) -> AsyncIterator[Reply]:
        # Poe wants a first event within 5 s; ours goes out before any work.
        yield fp.MetaResponse(text="", content_type="text/markdown", linkify=False, suggested_replies=False)
        yield fp.PartialResponse(text=progress_text(None, WRITING), is_replace_response=True)
        ask = read_ask(request)
        if ask.unusable_attachment is not None:
            yield fp.ErrorResponse(
                text=f"I can make memes from photos (JPEG, PNG, WebP or GIF), not from {ask.unusable_attachment} "
                "files. Send a photo, or just type a topic.",
                allow_retry=False,
                error_type="user_caused_error",
            )
            return
        if not ask.topic and ask.photo is None:
            yield fp.ErrorResponse(
                text="Send me a topic to make a meme about, e.g. “Monday mornings”.",
                allow_retry=False,
                error_type="user_caused_error",
            )
            return
        if ask.too_long_by:
            yield fp.ErrorResponse(
                text=f"That topic is {len(ask.topic):,} characters long; please send at most "
                f"{len(ask.topic) - ask.too_long_by:,} characters.",
                allow_retry=False,
                error_type="user_message_too_long",
            )
            return
        choices = read_choices(
            request.query[-1] if request.query else None,
            text_bot=self.config.text_bot,
            image_bot=self.config.image_bot,
            caption=self.config.caption_overlay,
        )
        if ask.photo is not None and choices.text_bot not in VISION_BOTS:
            choices = replace(choices, text_bot=self.config.vision_bot)
        config = self._run_config(request, ask, choices)
        started = time.monotonic()
        for round_ in range(MEME_ROUNDS):
            try:
                deadline = asyncio.get_running_loop().time() + REPLY_BUDGET_S - (time.monotonic() - started)
                async for event in self._make_meme(request, ask, choices, config, deadline):
                    yield event
                return
            except Exception as error:
                last_round = round_ == MEME_ROUNDS - 1 or time.monotonic() - started > SECOND_ROUND_WITHIN_S
                if last_round or not _worth_another_round(error):
                    yield self._error(error)
                    return
                logger.info("meme round failed (%s); making it once more", type(error).__name__)
                yield fp.PartialResponse(text=progress_text(None, "✍️ Starting over…"), is_replace_response=True)

    def _run_config(self, request: fp.QueryRequest, ask: MemeAsk, choices: Choices) -> RunnableConfig:
        return {
            "run_name": "MemeBot",
            "callbacks": tracing_callbacks(self.config.trace_file, secrets=(self.access_key or "",)),
            "configurable": {
                POE_REQUEST_KEY: request,
                "caption_language": ask.language,
                **choices.configurable(),
                **ask.chain_configurable(),
            },
            "metadata": {
                "conversation_id": request.conversation_id,
                "message_id": request.message_id,
                "text_bot": choices.text_bot,
                "image_bot": choices.image_bot,
                "follow_up": ask.follow_up.kind if ask.follow_up else "",
            },
        }

    def _error(self, error: BaseException) -> fp.ErrorResponse:
        text, allow_retry = explain(error)
        logger.warning("meme failed: %s: %s", type(error).__name__, error)
        return fp.ErrorResponse(text=text, allow_retry=allow_retry)

    async def _make_meme(
        self, request: fp.QueryRequest, ask: MemeAsk, choices: Choices, config: RunnableConfig, deadline: float
    ) -> AsyncIterator[Reply]:
        loop = asyncio.get_running_loop()
        drawing_since: float | None = None
        shown = progress_text(None, WRITING)  # already on screen
        started = shown_at = loop.time()
        quote: str | None = None
        quote_done = False
        if ask.photo is not None:
            stream = self.photo_chain.astream(ask.chain_input(), config)
        else:
            stream = self.chain.astream({**ask.chain_input(), "style": choices.style}, config)
        meme: Meme | None = None
        # The stream is read to its end (the Meme is its last item) so the chain's runs finish cleanly.
        async for item in in_background(stream, tick_s=TICK_S, deadline=deadline, name="meme"):
            if isinstance(item, MemeProgress):
                quote, quote_done = item.draft.quote, item.draft.quote_complete
                if item.drawing and drawing_since is None:
                    drawing_since = loop.time()
            elif isinstance(item, Meme):
                meme = item
                continue
            elif item is not TICK or meme is not None:
                continue
            if drawing_since is None:
                status = writing_status(choices.text_bot, loop.time() - started)
            else:
                status = drawing_status(choices.image_bot, loop.time() - drawing_since)
            text = progress_text(quote, status)
            if text != shown and (quote_done or loop.time() - shown_at >= REPLACE_EVERY_S):
                shown, shown_at = text, loop.time()
                yield fp.PartialResponse(text=text, is_replace_response=True)
        if meme is None:
            raise RuntimeError("the meme chain ended without a meme")
        async for event in self._deliver(request, ask, meme):
            yield event

    async def _deliver(self, request: fp.QueryRequest, ask: MemeAsk, meme: Meme) -> AsyncIterator[Reply]:
        start = time.perf_counter()
        if meme.picture is not None:
            upload = await self.post_message_attachment(
                message_id=request.message_id,
                file_data=meme.picture,
                filename=meme.picture_name or "meme.jpg",
                is_inline=True,
                base_url=self.endpoints.upload_url,
            )
        else:
            upload = await self.post_message_attachment(
                message_id=request.message_id,
                download_url=meme.image.url,
                download_filename=meme.image.name,
                is_inline=True,
                base_url=self.endpoints.upload_url,
            )
        logger.debug("uploaded in %.3fs", time.perf_counter() - start)
        yield fp.PartialResponse(
            text=final_text(meme.quote, upload.inline_ref, meme.image_prompt), is_replace_response=True
        )
        yield fp.DataResponse(metadata=ask.remember(meme.draft, meme.image.url))
        for suggestion in SUGGESTED_REPLIES:
            yield fp.PartialResponse(text=suggestion, is_suggested_reply=True)

    async def _upload_file(
        self,
        *,
        file: bytes | BinaryIO | None,
        file_url: str | None,
        file_name: str | None,
        api_key: str,
        base_url: str,
    ) -> fp.Attachment:
        # fastapi_poe builds a fresh HTTP client (and TLS context) per upload; reuse the pooled one.
        data = file.read() if file is not None and not isinstance(file, bytes) else file
        return await upload_attachment(
            api_key=api_key,
            filename=file_name or "meme.jpg",
            file_data=data,
            file_url=file_url,
            endpoints=PoeEndpoints(upload_url=base_url),
        )


def _sync_settings(bot: MemeBot, bot_name: str, access_key: str) -> None:
    settings = asyncio.run(bot.get_settings(fp.SettingsRequest(version=fp.client.PROTOCOL_VERSION, type="settings")))
    try:
        fp.sync_bot_settings(bot_name, access_key, settings=settings.model_dump(), base_url=bot.endpoints.bot_url)
        logger.info("settings synced to Poe for %s", bot_name)
    except Exception as error:
        logger.error("could not sync settings for %s: %s", bot_name, type(error).__name__)


def create_app(config: BotConfig | None = None) -> FastAPI:
    """The bot's ASGI app; raises ConfigError when the access key is missing or malformed."""
    config = config or BotConfig()
    access_key = config.checked_access_key()
    install_log_redaction(extra=(access_key,))
    bot = MemeBot(access_key=access_key, config=config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.bot_name:
            await asyncio.to_thread(_sync_settings, bot, config.bot_name, access_key)
        yield
        await close_shared_http_client()

    app = fp.make_app(bot, app=FastAPI(title="Meme Creator", lifespan=lifespan))
    install_protocol_guard(app, access_key=access_key)  # malformed requests get a 4xx, never a 500
    return app


def __getattr__(name: str) -> Any:
    # `uvicorn server:app` builds the app on first access, so importing this module needs no key.
    if name == "app":
        try:
            application = create_app()
        except ConfigError as error:
            raise SystemExit(f"memebot: {error}") from None
        globals()["app"] = application
        return application
    raise AttributeError(name)
