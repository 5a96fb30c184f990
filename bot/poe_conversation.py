"""The Poe side of a conversation with a server bot: history, parameters and every event, as Poe keeps them.

fastapi_poe's client drops `data` events (the metadata Poe stores on a bot message), so this reads the SSE
stream itself, with fastapi_poe's own request and message types.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fastapi_poe as fp
import httpx
import httpx_sse


@dataclass
class BotReply:
    """One reply of the bot, as Poe would show and store it."""

    text: str = ""
    attachments: list[fp.Attachment] = field(default_factory=list)
    suggested_replies: list[str] = field(default_factory=list)
    metadata: str | None = None
    error: dict[str, Any] | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    message_id: str = ""

    @property
    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]


def _apply(reply: BotReply, name: str, data: dict[str, Any]) -> None:
    if name == "text":
        reply.text += str(data.get("text", ""))
    elif name == "replace_response":
        reply.text = str(data.get("text", ""))
    elif name == "file":
        reply.attachments.append(fp.Attachment.model_validate(data))
    elif name == "suggested_reply":
        reply.suggested_replies.append(str(data.get("text", "")))
    elif name == "data":
        reply.metadata = str(data.get("metadata", ""))
    elif name == "error":
        reply.error = data


class PoeConversation:
    """A conversation with a bot at `url`, holding its history the way Poe sends it on every turn."""

    def __init__(
        self,
        url: str,
        access_key: str,
        *,
        client: httpx.AsyncClient | None = None,
        language_code: str = "en",
        timeout: float = 130.0,
    ) -> None:
        self.url = url
        self.access_key = access_key
        self.client = client
        self.language_code = language_code
        self.timeout = timeout
        self.user_id = f"u-{uuid.uuid4().hex[:16]}"
        self.conversation_id = f"c-{uuid.uuid4().hex[:16]}"
        self.messages: list[fp.ProtocolMessage] = []

    def request(self, message_id: str) -> fp.QueryRequest:
        """The query Poe would send now."""
        return fp.QueryRequest(
            version=fp.client.PROTOCOL_VERSION,
            type="query",
            query=list(self.messages),
            user_id=self.user_id,
            conversation_id=self.conversation_id,
            message_id=message_id,
            language_code=self.language_code,
        )

    async def send(
        self, text: str, *, attachments: Sequence[fp.Attachment] = (), parameters: dict[str, Any] | None = None
    ) -> BotReply:
        """Send a user message and read the whole reply; the reply joins the history as Poe would store it."""
        self.messages.append(
            fp.ProtocolMessage(
                role="user",
                content=text,
                attachments=list(attachments),
                parameters=parameters or {},
                message_id=f"m-{uuid.uuid4().hex[:16]}",
            )
        )
        reply = BotReply(message_id=f"m-{uuid.uuid4().hex[:16]}")
        payload = self.request(reply.message_id).model_dump(exclude={"access_key", "api_key"})
        headers = {"Authorization": f"Bearer {self.access_key}"}
        client = self.client or httpx.AsyncClient(timeout=self.timeout)
        try:
            async with httpx_sse.aconnect_sse(
                client, "POST", self.url, json=payload, headers=headers, timeout=self.timeout
            ) as source:
                source.response.raise_for_status()
                async for event in source.aiter_sse():
                    data = json.loads(event.data) if event.data else {}
                    reply.events.append((event.event, data))
                    if event.event == "done":
                        break
                    _apply(reply, event.event, data)
        finally:
            if self.client is None:
                await client.aclose()
        self.messages.append(
            fp.ProtocolMessage(
                role="bot",
                content=reply.text,
                attachments=reply.attachments,
                metadata=reply.metadata,
                message_id=reply.message_id,
            )
        )
        return reply
