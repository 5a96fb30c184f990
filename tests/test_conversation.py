"""Multi-turn conversations over HTTP, held as Poe holds them: follow-ups refine the last meme, controls steer bots."""

from __future__ import annotations

import io
import json
from typing import Any

import fastapi_poe as fp
import httpx
import pytest
from PIL import Image

from bot.controls import IMAGE_BOTS, TEXT_BOTS
from bot.poe_conversation import BotReply, PoeConversation
from chains.poe_client import PoeEndpoints, upload_attachment
from localpoe import LocalPoeServer


def last_prompt(poe: LocalPoeServer, bot: str = "GPT-4o-Mini") -> str:
    return str(poe.platform.requests(bot)[-1]["request"]["query"][-1]["content"])


def draft_of(reply: BotReply) -> dict[str, Any]:
    assert reply.metadata, reply.events
    return dict(json.loads(reply.metadata)["draft"])


@pytest.mark.parametrize(
    ("follow_up", "expected_instruction"),
    [
        ("another one", "different meme on the same topic"),
        ("make it darker", "darker"),
        ("more wholesome please", "wholesome"),
        ("make it more absurd", "absurd"),
        ("different art style", "different art style"),
        ("keep the quote, new picture", "Keep the quote exactly"),
        ("keep the picture, new quote", "Keep the image description exactly"),
        ("in Chinese", "language with code zh"),
    ],
)
async def test_follow_up_refines_the_last_meme(
    bot_url: str, access_key: str, local_poe: LocalPoeServer, follow_up: str, expected_instruction: str
) -> None:
    conversation = PoeConversation(bot_url, access_key)
    first = await conversation.send("Monday mornings")
    second = await conversation.send(follow_up)
    prompt = last_prompt(local_poe)
    assert "<previous_draft>" in prompt and draft_of(first)["quote"].split("\n")[0] in prompt
    assert expected_instruction in prompt
    assert "<topic>\nMonday mornings\n</topic>" in prompt  # the topic carried over, not the follow-up text
    assert second.attachments and second.error is None
    if follow_up == "in Chinese":
        assert "<language>zh</language>" in prompt
        assert any("\u4e00" <= ch <= "\u9fff" for ch in draft_of(second)["quote"])


async def test_a_new_topic_starts_fresh(bot_url: str, access_key: str, local_poe: LocalPoeServer) -> None:
    conversation = PoeConversation(bot_url, access_key)
    await conversation.send("Monday mornings")
    await conversation.send("my cat walking on the keyboard during a video call")
    prompt = last_prompt(local_poe)
    assert "<previous_draft>" not in prompt and "my cat walking" in prompt


async def test_parameter_controls_change_what_the_upstream_bots_receive(
    bot_url: str, access_key: str, local_poe: LocalPoeServer
) -> None:
    conversation = PoeConversation(bot_url, access_key)
    parameters = {"text_bot": "Claude-3-Haiku", "image_bot": "DALL-E-3", "aspect_ratio": "16:9", "style": "anime"}
    reply = await conversation.send("Monday mornings", parameters=parameters)
    assert reply.attachments and reply.error is None
    stats = local_poe.platform.stats()["bots"]
    assert "Claude-3-Haiku" in stats and "DALL-E-3" in stats
    assert "GPT-4o-Mini" not in stats and "FLUX-schnell" not in stats
    assert "<style>anime</style>" in last_prompt(local_poe, "Claude-3-Haiku")
    drawn = local_poe.platform.requests("DALL-E-3")[-1]["request"]["query"][-1]
    assert drawn["content"].endswith("--aspect 16:9") and drawn["parameters"]["aspect_ratio"] == "16:9"
    assert "Drawing with DALL-E-3" in " ".join(d.get("text", "") for _, d in reply.events)


async def test_caption_toggle_off_shows_the_image_bots_picture(
    bot_url: str, access_key: str, local_poe: LocalPoeServer
) -> None:
    reply = await PoeConversation(bot_url, access_key).send("Monday mornings", parameters={"caption": False})
    [attachment] = reply.attachments
    assert attachment.content_type == "image/png"  # the painter's PNG, re-uploaded untouched (captions are JPEG)


async def test_unknown_parameter_values_fall_back_to_the_configured_bots(
    bot_url: str, access_key: str, local_poe: LocalPoeServer
) -> None:
    reply = await PoeConversation(bot_url, access_key).send(
        "cats", parameters={"text_bot": "Evil-Bot", "aspect_ratio": "99:1"}
    )
    assert reply.error is None and "Evil-Bot" not in local_poe.platform.stats()["bots"]
    assert "--aspect" not in local_poe.platform.requests("FLUX-schnell")[-1]["request"]["query"][-1]["content"]


def test_settings_validate_and_cover_every_pickable_bot(bot_url: str, access_key: str) -> None:
    response = httpx.post(
        bot_url,
        json={"version": fp.client.PROTOCOL_VERSION, "type": "settings"},
        headers={"Authorization": f"Bearer {access_key}"},
    )
    settings = fp.SettingsResponse.model_validate(response.json())
    assert settings.parameter_controls is not None
    assert set(TEXT_BOTS) | set(IMAGE_BOTS) <= set(settings.server_bot_dependencies)
    names = {c.parameter_name for s in settings.parameter_controls.sections for c in s.controls or []}  # type: ignore[union-attr]
    assert {"text_bot", "image_bot", "aspect_ratio", "caption", "style"} <= names


async def upload_photo(poe: LocalPoeServer, size: tuple[int, int] = (900, 600)) -> fp.Attachment:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 140, 90)).save(buffer, "PNG")
    return await upload_attachment(
        api_key=poe.api_key,
        filename="garden.png",
        file_data=buffer.getvalue(),
        endpoints=PoeEndpoints.from_root(poe.url),
    )


async def test_meme_this_photo_captions_the_users_own_picture(
    bot_url: str, access_key: str, local_poe: LocalPoeServer
) -> None:
    photo = await upload_photo(local_poe)
    reply = await PoeConversation(bot_url, access_key).send("my garden", attachments=[photo])
    assert reply.error is None, reply.error
    [attachment] = reply.attachments
    async with httpx.AsyncClient() as client:
        picture = Image.open(io.BytesIO((await client.get(attachment.url)).content))
    assert picture.format == "JPEG" and picture.size == (900, 600)  # the user's photo, captioned
    assert picture.getpixel((450, 300)) != (40, 140, 90) or picture.getpixel((450, 560)) != (40, 140, 90)
    bots = local_poe.platform.stats()["bots"]
    assert set(bots) == {"GPT-4o-Mini"}  # no image bot was called
    sent = local_poe.platform.requests("GPT-4o-Mini")[-1]["request"]["query"][-1]
    assert [a["url"] for a in sent["attachments"]] == [photo.url]


async def test_photo_with_a_text_only_writer_goes_to_the_vision_bot(
    bot_url: str, access_key: str, local_poe: LocalPoeServer
) -> None:
    photo = await upload_photo(local_poe, (600, 600))
    reply = await PoeConversation(bot_url, access_key).send(
        "", attachments=[photo], parameters={"text_bot": "Mistral-Large-2"}
    )
    assert reply.error is None and reply.attachments
    assert set(local_poe.platform.stats()["bots"]) == {"GPT-4o-Mini"}


async def test_a_non_image_attachment_gets_a_clear_message(
    bot_url: str, access_key: str, local_poe: LocalPoeServer
) -> None:
    document = fp.Attachment(
        url=f"{local_poe.url}files/x/report.pdf", content_type="application/pdf", name="report.pdf"
    )
    reply = await PoeConversation(bot_url, access_key).send("summarise", attachments=[document])
    assert reply.error is not None and "photo" in reply.error["text"] and "application/pdf" in reply.error["text"]
    assert local_poe.platform.stats()["bots"] == {}


async def test_keep_the_picture_reuses_it_without_drawing_again(
    bot_url: str, access_key: str, local_poe: LocalPoeServer
) -> None:
    conversation = PoeConversation(bot_url, access_key)
    first = await conversation.send("Monday mornings")
    second = await conversation.send("keep the picture, new quote")
    assert second.error is None and second.attachments
    assert local_poe.platform.stats()["bots"]["FLUX-schnell"]["started"] == 1  # drawn once, for the first meme
    assert json.loads(second.metadata or "{}")["image_url"] == json.loads(first.metadata or "{}")["image_url"]
