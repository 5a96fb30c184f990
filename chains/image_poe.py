"""PoeImageGenerator: any Poe image bot (FLUX, Imagen, DALL-E 3, ...) as a Runnable returning the picture."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlparse

import fastapi_poe as fp
import httpx
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.utils import from_env, secret_from_env
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from chains.errors import PoeBotError, PoeNoImage
from chains.poe_client import POE_URL_ENV, PoeEndpoints, outgoing_request, shared_http_client, stream_bot
from chains.secrets import redact
from chains.sync_bridge import run_sync

DEFAULT_IMAGE_BOT: Final = "FLUX-schnell"
POE_IMAGE_HOSTS: Final = ("poe.com", "poecdn.net", "quora.com", "quoracdn.net")
"""Where Poe's image bots put their pictures; a picture anywhere else is not fetched or shown."""
_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\((\S+?)(?:\s+\"[^\"]*\")?\)")
_ASPECT_RATIO = re.compile(r"^\d{1,2}:\d{1,2}$")


class GeneratedImage(BaseModel):
    """A picture a Poe image bot drew: where it is, what it is and, once read, its bytes."""

    url: str
    content_type: str = "image/png"
    name: str = "image.png"
    bot_name: str = ""
    prompt: str = ""
    data: bytes | None = Field(default=None, repr=False, exclude=True)

    model_config = ConfigDict(frozen=False)

    async def aread(self) -> bytes:
        """The picture's bytes, downloaded once through the pooled client."""
        if self.data is None:
            try:
                response = await shared_http_client().get(self.url)
                response.raise_for_status()
            except httpx.HTTPError as error:
                raise PoeBotError(
                    f"the picture from {self.bot_name or 'the image bot'} could not be downloaded "
                    f"({type(error).__name__})",
                    bot_name=self.bot_name,
                ) from None
            self.data = response.content
            self.content_type = response.headers.get("content-type", self.content_type).split(";")[0]
        return self.data

    def read(self) -> bytes:
        """Sync `aread`."""
        return self.data if self.data is not None else run_sync(self.aread())


@dataclass(frozen=True)
class _ImageCall:
    request: fp.QueryRequest
    api_key: str
    prompt: str


class PoeImageGenerator(RunnableSerializable[str, GeneratedImage]):
    """Calls a Poe image bot with a picture description and returns the picture it draws.

    Today's bots send the picture as a `file` attachment; older ones as a markdown image link: both work.
    Like `ChatPoe`, a `configurable={"poe_request": request}` makes the call on behalf of a served message.
    """

    bot_name: str = DEFAULT_IMAGE_BOT
    aspect_ratio: str | None = None
    """"W:H", sent as the ` --aspect W:H` flag Poe's image bots read and as a message parameter."""
    parameters: dict[str, Any] = Field(default_factory=dict)
    """Extra message parameters for bots that expose controls."""
    timeout: float | None = 90.0
    max_retries: int = 2
    api_key: SecretStr | None = Field(default_factory=secret_from_env("POE_API_KEY", default=None))
    poe_url: str | None = Field(default_factory=from_env(POE_URL_ENV, default=None))
    allowed_hosts: tuple[str, ...] = POE_IMAGE_HOSTS
    """Hosts (and their subdomains) a picture may come from, besides the platform at `poe_url`."""
    name: str | None = "PoeImageGenerator"

    def _expected_place(self, url: str) -> bool:
        parsed = urlparse(url)
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            return False
        if self.poe_url and parsed.netloc == urlparse(self.poe_url).netloc:
            return True
        host = parsed.hostname.lower()
        return parsed.scheme == "https" and any(host == h or host.endswith("." + h) for h in self.allowed_hosts)

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "POE_API_KEY"}

    def _prepare(self, prompt: str) -> _ImageCall:
        text = " ".join(prompt.split())
        if not text:
            raise ValueError("the image prompt is empty")
        parameters = dict(self.parameters)
        if self.aspect_ratio:
            if not _ASPECT_RATIO.match(self.aspect_ratio):
                raise ValueError(f"aspect ratio must look like 16:9, not {self.aspect_ratio!r}")
            text = f"{text} --aspect {self.aspect_ratio}"
            parameters["aspect_ratio"] = self.aspect_ratio
        query = [fp.ProtocolMessage(role="user", content=text, parameters=parameters)]
        request, api_key = outgoing_request(query, caller="PoeImageGenerator", api_key=self.api_key)
        return _ImageCall(request, api_key, prompt)

    async def _draw(self, call: _ImageCall) -> GeneratedImage:
        text = ""
        unexpected = 0
        async for message in stream_bot(
            call.request,
            self.bot_name,
            call.api_key,
            max_retries=self.max_retries,
            timeout=self.timeout,
            endpoints=PoeEndpoints.from_root(self.poe_url),
            retry_after_output=True,  # only the picture is kept, so "Generating..." twice shows nothing twice
        ):
            attachment = message.attachment
            if attachment is not None and attachment.content_type.startswith("image/"):
                if not self._expected_place(attachment.url):
                    unexpected += 1
                    continue
                return GeneratedImage(
                    url=attachment.url,
                    content_type=attachment.content_type,
                    name=attachment.name,
                    bot_name=self.bot_name,
                    prompt=call.prompt,
                )
            if not isinstance(message, fp.MetaResponse) and not message.is_suggested_reply:
                text = message.text if message.is_replace_response else text + message.text
        for match in _MARKDOWN_IMAGE.finditer(text):
            url = match.group(1)
            if not self._expected_place(url):
                unexpected += 1
                continue
            name = url.rsplit("/", 1)[-1] or "image"
            return GeneratedImage(url=url, name=name, bot_name=self.bot_name, prompt=call.prompt)
        if unexpected:
            raise PoeNoImage(
                f"image bot {self.bot_name} sent a picture from an unexpected place; it was not fetched",
                bot_name=self.bot_name,
            )
        said = redact(" ".join(text.split()), (call.api_key,))[:200] or "nothing"
        raise PoeNoImage(f"image bot {self.bot_name} sent no picture (it said: {said})", bot_name=self.bot_name)

    async def _ainvoke(self, prompt: str) -> GeneratedImage:
        return await self._draw(self._prepare(prompt))

    def _invoke(self, prompt: str) -> GeneratedImage:
        call = self._prepare(prompt)  # here, where the caller's config is visible
        return run_sync(self._draw(call))

    async def ainvoke(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> GeneratedImage:
        return await self._acall_with_config(self._ainvoke, input, config)

    def invoke(self, input: str, config: RunnableConfig | None = None, **kwargs: Any) -> GeneratedImage:
        return self._call_with_config(self._invoke, input, config)
