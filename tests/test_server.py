"""The bot as Poe meets it: uvicorn on a loopback port, pointed at the local Poe platform, spoken to like Poe."""

from __future__ import annotations

import io
from collections.abc import Callable

import fastapi_poe as fp
import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from bot.config import BotConfig, ConfigError
from bot.poe_conversation import PoeConversation
from localpoe import BotKnobs, FaultKind, KnobSet, LocalPoeServer
from server import MemeBot, create_app


async def test_a_meme_arrives_as_poe_would_show_it(bot_url: str, access_key: str, local_poe: LocalPoeServer) -> None:
    conversation = PoeConversation(bot_url, access_key)
    reply = await conversation.send("Monday mornings")
    names = reply.event_names
    assert names[0] == "meta" and names[-1] == "done" and "error" not in names
    assert names.index("file") < max(i for i, n in enumerate(names) if n == "replace_response")
    [attachment] = reply.attachments
    assert attachment.inline_ref and f"][{attachment.inline_ref}]" in reply.text
    assert attachment.url.startswith(local_poe.url)  # uploaded by the bot, through the platform
    async with httpx.AsyncClient() as client:
        picture = (await client.get(attachment.url)).content
    assert Image.open(io.BytesIO(picture)).size[0] >= 256
    assert reply.suggested_replies and "Another one" in reply.suggested_replies
    assert reply.metadata and '"quote"' in reply.metadata
    quote = reply.text.split("![")[0]
    assert quote.count("**") >= 2 and len(quote.strip()) > 5
    assert local_poe.platform.stats()["uploads"] == 1


async def test_the_first_event_is_immediate_and_progress_replaces_itself(
    bot_url: str, access_key: str, local_poe: LocalPoeServer
) -> None:
    local_poe.platform.set_knobs(
        KnobSet(default=BotKnobs(first_token_delay_s=0.2, tokens_per_second=30, image_delay_s=2.2))
    )
    reply = await PoeConversation(bot_url, access_key).send("cats vs keyboards")
    texts = [data.get("text", "") for name, data in reply.events if name in ("text", "replace_response")]
    assert "Writing" in texts[0]
    assert any("Drawing with FLUX-schnell" in t and "1s" in t for t in texts)
    assert all(name != "text" for name, _ in reply.events[2:])  # everything after the first event replaces
    quotes_while_drawing = {t.split("\n\n_")[0] for t in texts if "Drawing with" in t}
    assert len(quotes_while_drawing) >= 2  # the picture was being drawn while the quote still streamed
    final = texts[-1]
    assert "Drawing" not in final and "Writing" not in final


def test_settings_declare_dependencies_with_retries_and_fallback(bot_url: str, access_key: str) -> None:
    response = httpx.post(
        bot_url,
        json={"version": fp.client.PROTOCOL_VERSION, "type": "settings"},
        headers={"Authorization": f"Bearer {access_key}"},
    )
    settings = fp.SettingsResponse.model_validate(response.json())
    dependencies = settings.server_bot_dependencies
    assert dependencies["GPT-4o-Mini"] == 6 and dependencies["FLUX-schnell"] == 6
    assert dependencies["Imagen-3"] == 12  # a pickable image bot and the fallback: both rounds of both roles
    assert settings.introduction_message and "topic" in settings.introduction_message


async def test_wrong_key_gets_401(bot_url: str) -> None:
    conversation = PoeConversation(bot_url, "w" * 32)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await conversation.send("Monday mornings")
    assert caught.value.response.status_code == 401


async def test_empty_topic_gets_a_clear_message(bot_url: str, access_key: str, local_poe: LocalPoeServer) -> None:
    reply = await PoeConversation(bot_url, access_key).send("   \n ")
    assert reply.error is not None and "topic" in reply.error["text"]
    assert reply.error.get("error_type") == "user_caused_error"
    assert local_poe.platform.stats()["bots"] == {}


async def test_upstream_failure_is_a_readable_retryable_error(
    bot_url: str, access_key: str, local_poe: LocalPoeServer
) -> None:
    local_poe.platform.set_knobs(
        KnobSet(bots={"GPT-4o-Mini": BotKnobs(fault_rate=1.0, fault_kinds=[FaultKind.RATE_LIMIT])})
    )
    reply = await PoeConversation(bot_url, access_key).send("Monday mornings")
    assert reply.error is not None and reply.error["allow_retry"] is True
    assert "GPT-4o-Mini" in reply.error["text"] and "try again" in reply.error["text"]
    assert "unexpected issue" not in reply.error["text"]
    assert reply.event_names[-1] == "done"


def test_missing_or_malformed_key_is_a_clear_start_up_error(local_poe: LocalPoeServer) -> None:
    with pytest.raises(ConfigError, match="POE_ACCESS_KEY is not set"):
        create_app(BotConfig(MEMEBOT_POE_URL=local_poe.url))
    with pytest.raises(ConfigError, match="malformed") as caught:
        create_app(BotConfig(POE_ACCESS_KEY="short-secret-key"))
    assert "short-secret-key" not in str(caught.value)


def test_uvicorn_import_path_serves_the_app(
    monkeypatch: pytest.MonkeyPatch, access_key: str, serve_bot: Callable[[FastAPI], str]
) -> None:
    import server

    monkeypatch.setenv("POE_ACCESS_KEY", access_key)
    monkeypatch.delitem(server.__dict__, "app", raising=False)
    app = server.app
    assert isinstance(app, FastAPI)
    assert httpx.get(serve_bot(app)).status_code == 200


def test_bot_is_a_poebot_dataclass(bot_config: BotConfig, access_key: str) -> None:
    bot = MemeBot(access_key=access_key, config=bot_config)
    assert isinstance(bot, fp.PoeBot) and bot.access_key == access_key
