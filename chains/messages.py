"""Message conversion between LangChain and Poe's protocol, both ways."""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlparse

import fastapi_poe as fp
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

_ROLE_BY_TYPE: Final = {"system": "system", "human": "user", "ai": "bot"}


def _image_url(block: dict[str, Any]) -> str | None:
    if block.get("type") == "image_url":
        value = block.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
        return url if isinstance(url, str) else None
    if block.get("type") in ("image", "file") and isinstance(block.get("url"), str):
        return str(block["url"])
    return None


def _attachment_for(url: str) -> fp.Attachment:
    if url.startswith("data:"):
        raise ValueError("Poe takes pictures by URL; upload inline image data first (fastapi_poe.upload_file)")
    name = urlparse(url).path.rsplit("/", 1)[-1] or "image"
    content_type = mimetypes.guess_type(name)[0] or "image/jpeg"
    return fp.Attachment(url=url, content_type=content_type, name=name)


def _split_content(content: str | list[str | dict[str, Any]]) -> tuple[str, list[fp.Attachment]]:
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    attachments: list[fp.Attachment] = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
        elif block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif (url := _image_url(block)) is not None:
            attachments.append(_attachment_for(url))
        else:
            raise ValueError(f"Poe bots cannot take a {block.get('type')!r} content block")
    return "\n".join(texts), attachments


def to_protocol_messages(messages: Sequence[BaseMessage]) -> list[fp.ProtocolMessage]:
    """LangChain messages as Poe protocol messages (system/human/ai -> system/user/bot)."""
    converted: list[fp.ProtocolMessage] = []
    for message in messages:
        role = _ROLE_BY_TYPE.get(message.type)
        if role is None:
            raise ValueError(f"Poe bots take system, human and AI messages, not {message.type!r} messages")
        text, attachments = _split_content(message.content)
        converted.append(fp.ProtocolMessage(role=role, content=text, attachments=attachments))
    return converted


def from_protocol_messages(messages: Sequence[fp.ProtocolMessage]) -> list[BaseMessage]:
    """Poe protocol messages as LangChain messages; attachments become image or file blocks."""
    converted: list[BaseMessage] = []
    for message in messages:
        content: str | list[str | dict[str, Any]] = message.content
        if message.attachments:
            blocks: list[str | dict[str, Any]] = [{"type": "text", "text": message.content}]
            for attachment in message.attachments:
                kind = "image" if attachment.content_type.startswith("image/") else "file"
                blocks.append({"type": kind, "url": attachment.url, "mime_type": attachment.content_type})
            content = blocks
        if message.role == "system":
            converted.append(SystemMessage(content=content))
        elif message.role == "bot":
            converted.append(AIMessage(content=content))
        else:
            converted.append(HumanMessage(content=content))
    return converted
