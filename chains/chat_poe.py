"""ChatPoe: any Poe text bot as a LangChain chat model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Final

import fastapi_poe as fp
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import ConfigDict, Field, SecretStr

from chains.messages import to_protocol_messages
from chains.poe_client import POE_URL_ENV, PoeEndpoints, outgoing_request, stream_bot
from chains.sync_bridge import iterate_sync

DEFAULT_TEXT_BOT: Final = "GPT-4o-Mini"


@dataclass(frozen=True)
class _PoeCall:
    bot_name: str
    request: fp.QueryRequest
    api_key: str
    stop: tuple[str, ...]


def _earliest_stop(text: str, stops: tuple[str, ...]) -> int:
    positions = [i for s in stops if (i := text.find(s)) >= 0]
    return min(positions) if positions else -1


class ChatPoe(BaseChatModel):
    """Any Poe text bot (Claude, GPT, Gemini, Mistral, ...) as a LangChain chat model.

    Outside a Poe server, calls are billed to `api_key` (default: `POE_API_KEY`). Inside one, pass the
    incoming `QueryRequest` as `configurable={"poe_request": request}`: calls then go out on behalf of that
    message (its ids and the bot's access key), so Poe bills that user.

    Example:
        ```python
        from chains import ChatPoe

        model = ChatPoe(model="Claude-Sonnet-4", temperature=0.7)
        model.invoke("Write a haiku about Mondays")
        ```
    """

    model_name: str = Field(default=DEFAULT_TEXT_BOT, alias="model")
    """Name of the Poe bot to call."""
    temperature: float | None = None
    max_tokens: int | None = None
    """Forwarded to the bot as a message parameter; Poe bots that expose a length control honour it."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = 60.0
    """Seconds for the whole call, retries included."""
    max_retries: int = 2
    """Retries before any text has arrived (never after: that would repeat streamed text)."""
    api_key: SecretStr | None = Field(default_factory=secret_from_env("POE_API_KEY", default=None))
    poe_url: str | None = Field(default_factory=from_env(POE_URL_ENV, default=None))
    """Root of the Poe platform (a local one for development); unset means Poe's own hosts."""
    streaming: bool | None = None
    """Poe always streams; None rather than False, because langchain-core rebuilds a model configured with
    `configurable_fields` passing every field, and an explicit False would make `astream()` one final chunk."""

    model_config = ConfigDict(populate_by_name=True)

    @property
    def _llm_type(self) -> str:
        return "poe-chat"

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "POE_API_KEY"}

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="poe",
            ls_model_name=str(kwargs.get("model") or self.model_name),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if isinstance(temperature, int | float):
            params["ls_temperature"] = float(temperature)
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        if stops := stop or self.stop:
            params["ls_stop"] = stops
        return params

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _PoeCall:
        bot_name = str(kwargs.get("model") or self.model_name)
        stops = tuple(stop or self.stop or ())
        temperature = kwargs.get("temperature", self.temperature)
        query = to_protocol_messages(messages)
        if self.max_tokens is not None and query:
            query[-1] = query[-1].model_copy(
                update={"parameters": {**query[-1].parameters, "max_tokens": self.max_tokens}}
            )
        request, api_key = outgoing_request(
            query, caller="ChatPoe", api_key=self.api_key, temperature=temperature, stop_sequences=list(stops)
        )
        return _PoeCall(bot_name, request, api_key, stops)

    async def _chunks(self, call: _PoeCall) -> AsyncIterator[ChatGenerationChunk]:
        shown = ""
        finish_reason = "stop"
        attachments: list[dict[str, Any]] = []
        async for message in stream_bot(
            call.request,
            call.bot_name,
            call.api_key,
            max_retries=self.max_retries,
            timeout=self.timeout,
            endpoints=PoeEndpoints.from_root(self.poe_url),
        ):
            if isinstance(message, fp.MetaResponse) or message.is_suggested_reply or message.data:
                continue
            if message.attachment is not None:
                attachments.append(message.attachment.model_dump(exclude_none=True))
                continue
            full = message.text if message.is_replace_response else shown + message.text
            if not full.startswith(shown):
                # A replace that rewrites what was already streamed cannot be unsent; keep the new text.
                shown = ""
            if (cut := _earliest_stop(full, call.stop)) >= 0:
                full, finish_reason = full[:cut], "stop_sequence"
            if delta := full[len(shown) :]:
                shown = full
                yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if finish_reason == "stop_sequence":
                break
        metadata: dict[str, Any] = {
            "model_name": call.bot_name,
            "model_provider": "poe",
            "finish_reason": finish_reason,
        }
        if attachments:
            metadata["attachments"] = attachments
        yield ChatGenerationChunk(message=AIMessageChunk(content="", chunk_position="last", response_metadata=metadata))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in self._chunks(self._prepare(messages, stop, kwargs)):
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        for chunk in iterate_sync(lambda: self._chunks(call)):
            if run_manager is not None and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Poe always streams; a non-streaming call is the joined stream.
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
