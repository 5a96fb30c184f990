"""The built-in offline bots: a meme writer, a painter with file attachments, a legacy markdown-link painter."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator

from fastapi_poe.types import PartialResponse, SettingsResponse

from localpoe import painter, writer
from localpoe.events import BotCall

TEXT_BOT_NAMES: tuple[str, ...] = (
    "MemeWriter-Offline",
    "GPT-4o",
    "GPT-4o-Mini",
    "Claude-Sonnet-4",
    "Claude-3.5-Sonnet",
    "Claude-3-Haiku",
    "Mistral-Large-2",
    "Gemini-2.0-Flash",
    "Llama-3.1-405B",
)
IMAGE_BOT_NAMES: tuple[str, ...] = (
    "Painter-Offline",
    "FLUX-schnell",
    "FLUX-dev",
    "FLUX-pro-1.1",
    "Playground-v3",
    "DALL-E-3",
    "Imagen-3",
    "Ideogram-v2",
)
LEGACY_IMAGE_BOT_NAMES: tuple[str, ...] = ("StableDiffusionXL",)

WRITER_SETTINGS = SettingsResponse(
    introduction_message="Offline meme writer (localpoe): fills templates, no model behind it.",
    allow_attachments=True,
    enable_image_comprehension=True,
)
PAINTER_SETTINGS = SettingsResponse(
    introduction_message="Offline painter (localpoe): draws a simple scene from a hash of the prompt.",
    allow_attachments=False,
)

_PNG_CACHE = painter.PngCache()


async def meme_writer(call: BotCall) -> AsyncIterator[PartialResponse]:
    """Answer with meme JSON {"image_prompt", "quote"}, streamed in token-sized text events."""
    message = call.last_user
    photos: tuple[str, ...] = ()
    if message is not None:
        photos = tuple(a.name or "photo" for a in message.attachments if a.content_type.startswith("image/"))
    draft = writer.write_meme(writer.parse_message(call.last_user_message, photos), call.bot_name)
    for chunk in writer.token_chunks(writer.draft_json(draft)):
        yield PartialResponse(text=chunk)


def _file_name(bot_name: str, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", bot_name.lower()).strip("-") or "image"
    return f"{slug}-{hashlib.sha256(prompt.encode()).hexdigest()[:10]}.png"


async def _draw(call: BotCall) -> tuple[bytes, str]:
    message = call.last_user
    parameters = message.parameters if message is not None else {}
    prompt, aspect = painter.split_prompt(call.last_user_message, parameters)
    size = painter.size_for(aspect)
    data = await asyncio.to_thread(_PNG_CACHE.get_or_draw, prompt, size)
    return data, prompt


async def painter_bot(call: BotCall) -> AsyncIterator[PartialResponse]:
    """Answer as today's Poe image bots do: progress text, then the picture as a `file` attachment."""
    yield PartialResponse(text="Generating image...")
    data, prompt = await _draw(call)
    attachment = call.store_file(data, _file_name(call.bot_name, prompt), "image/png")
    yield PartialResponse(text="", is_replace_response=True)
    yield PartialResponse(text="", attachment=attachment)


async def legacy_painter_bot(call: BotCall) -> AsyncIterator[PartialResponse]:
    """Answer as older Poe image bots did: a markdown image link in the text, no attachment."""
    data, prompt = await _draw(call)
    attachment = call.store_file(data, _file_name(call.bot_name, prompt), "image/png")
    yield PartialResponse(text=f"![image]({attachment.url})")
