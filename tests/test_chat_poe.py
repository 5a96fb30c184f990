"""ChatPoe against the local Poe platform over loopback: streaming, batching, errors, and LangChain's own suites."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableLambda
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from chains import ChatPoe, MemeDraftParser, PoeAuthError, PoeBotError, PoeRateLimited, PoeTimeout
from chains.poe_client import POE_REQUEST_KEY
from localpoe import BotKnobs, FaultKind, KnobSet, LocalPoeServer
from tests.conftest import USER_API_KEY

MEME_PROMPT = "<topic>\nMonday mornings\n</topic>\n<language>en</language>"


def chat(server: LocalPoeServer, **kwargs: Any) -> ChatPoe:
    params: dict[str, Any] = {"model": "GPT-4o-Mini", "api_key": USER_API_KEY, "poe_url": server.url, **kwargs}
    return ChatPoe(**params)


@pytest.fixture
def paced(local_poe: LocalPoeServer) -> LocalPoeServer:
    """The platform sending tokens as a model does, a few milliseconds apart."""
    local_poe.platform.set_knobs(KnobSet(default=BotKnobs(tokens_per_second=200)))
    return local_poe


async def test_streams_tokens_as_separate_chunks(paced: LocalPoeServer) -> None:
    local_poe = paced
    chunks = [chunk async for chunk in chat(local_poe).astream(MEME_PROMPT)]
    texts = [c.content for c in chunks if c.content]
    assert len(texts) > 3
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].response_metadata["model_name"] == "GPT-4o-Mini"
    assert "quote" in "".join(str(t) for t in texts)


async def test_invoke_and_batch(local_poe: LocalPoeServer) -> None:
    model = chat(local_poe)
    single = await model.ainvoke(MEME_PROMPT)
    assert isinstance(single, AIMessage) and "image_prompt" in str(single.content)
    many = await model.abatch([MEME_PROMPT, MEME_PROMPT.replace("Monday mornings", "cats")], {"max_concurrency": 2})
    assert len(many) == 2 and all("quote" in str(m.content) for m in many)
    assert local_poe.platform.stats()["bots"]["GPT-4o-Mini"]["completed"] == 3


def test_sync_invoke_and_stream(paced: LocalPoeServer) -> None:
    model = chat(paced)
    assert "quote" in str(model.invoke(MEME_PROMPT).content)
    assert len([c for c in model.stream(MEME_PROMPT) if c.content]) > 3


async def test_messages_reach_poe_with_poe_roles(local_poe: LocalPoeServer) -> None:
    await chat(local_poe, temperature=0.3).ainvoke(
        [SystemMessage("be brief"), HumanMessage("hello"), AIMessage("hi"), HumanMessage(MEME_PROMPT)]
    )
    sent = local_poe.platform.requests("GPT-4o-Mini")[-1]["request"]
    assert [m["role"] for m in sent["query"]] == ["system", "user", "bot", "user"]
    assert sent["temperature"] == 0.3
    assert "access_key" not in sent and "api_key" not in sent


async def test_served_message_calls_go_out_on_its_behalf(local_poe: LocalPoeServer) -> None:
    from fastapi_poe import ProtocolMessage, QueryRequest

    served = QueryRequest(
        version="1.2",
        type="query",
        query=[ProtocolMessage(role="user", content="Monday")],
        user_id="u-served",
        conversation_id="c-served",
        message_id="m-served",
        access_key=USER_API_KEY,
    )
    model = ChatPoe(model="Claude-3-Haiku", poe_url=local_poe.url)  # no API key: the served request's key is used
    chain = RunnableLambda(lambda x: x) | model
    await chain.ainvoke(MEME_PROMPT, {"configurable": {POE_REQUEST_KEY: served}})
    sent = local_poe.platform.requests("Claude-3-Haiku")[-1]["request"]
    assert (sent["user_id"], sent["conversation_id"], sent["message_id"]) == ("u-served", "c-served", "m-served")
    assert sent["query"][-1]["content"] == MEME_PROMPT


async def test_stop_sequence_cuts_the_stream(local_poe: LocalPoeServer) -> None:
    message = await chat(local_poe).ainvoke(MEME_PROMPT, stop=['"quote"'])
    assert '"quote"' not in str(message.content)
    assert message.response_metadata["finish_reason"] == "stop_sequence"


async def test_wrong_key_is_an_auth_error(local_poe: LocalPoeServer) -> None:
    model = ChatPoe(model="GPT-4o-Mini", api_key="x" * 32, poe_url=local_poe.url)
    with pytest.raises(PoeAuthError) as caught:
        await model.ainvoke(MEME_PROMPT)
    assert "x" * 32 not in str(caught.value)


async def test_unknown_bot_is_a_bot_error_without_retries(local_poe: LocalPoeServer) -> None:
    with pytest.raises(PoeBotError):
        await chat(local_poe, model="No-Such-Bot").ainvoke(MEME_PROMPT)
    assert local_poe.platform.stats()["bots"].get("No-Such-Bot", {}).get("started", 1) <= 1


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [(FaultKind.RATE_LIMIT, PoeRateLimited), (FaultKind.ERROR, PoeBotError), (FaultKind.HTTP_500, PoeBotError)],
)
async def test_faults_retry_then_surface_as_our_errors(
    local_poe: LocalPoeServer, fault: FaultKind, error_type: type[Exception]
) -> None:
    local_poe.platform.set_knobs(KnobSet(bots={"GPT-4o-Mini": BotKnobs(fault_rate=1.0, fault_kinds=[fault])}))
    with pytest.raises(error_type):
        await chat(local_poe, max_retries=1).ainvoke(MEME_PROMPT)
    assert local_poe.platform.stats()["bots"]["GPT-4o-Mini"]["started"] == 2  # one try, one retry


async def test_retry_recovers_from_a_transient_fault(local_poe: LocalPoeServer) -> None:
    local_poe.platform.set_knobs(
        KnobSet(bots={"GPT-4o-Mini": BotKnobs(fault_rate=0.5, fault_kinds=[FaultKind.ERROR])}, seed=3)
    )
    results = await asyncio.gather(
        *(chat(local_poe, max_retries=4).ainvoke(MEME_PROMPT) for _ in range(6)), return_exceptions=True
    )
    assert sum(isinstance(r, AIMessage) for r in results) >= 5


async def test_dropped_connection_after_text_is_not_retried(local_poe: LocalPoeServer) -> None:
    local_poe.platform.set_knobs(KnobSet(bots={"GPT-4o-Mini": BotKnobs(fault_rate=1.0, fault_kinds=[FaultKind.DROP])}))
    seen: list[str] = []
    with pytest.raises(PoeBotError):
        async for chunk in chat(local_poe, max_retries=3).astream(MEME_PROMPT):
            seen.append(str(chunk.content))
    assert local_poe.platform.stats()["bots"]["GPT-4o-Mini"]["started"] == 1
    joined = "".join(seen)
    assert joined and joined.count('{"image_prompt"') <= 1  # nothing streamed twice


async def test_stall_is_cut_by_the_timeout(local_poe: LocalPoeServer) -> None:
    local_poe.platform.set_knobs(
        KnobSet(bots={"GPT-4o-Mini": BotKnobs(fault_rate=1.0, fault_kinds=[FaultKind.STALL], stall_s=30)})
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(PoeTimeout):
        await chat(local_poe, timeout=0.5, max_retries=0).ainvoke(MEME_PROMPT)
    assert loop.time() - start < 5


async def test_text_that_arrives_together_comes_out_as_one_chunk(local_poe: LocalPoeServer) -> None:
    # An instant bot sends its whole answer at once: LangChain pays per chunk, so it gets few large ones.
    chunks = [chunk async for chunk in chat(local_poe).astream(MEME_PROMPT)]
    text = "".join(str(c.content) for c in chunks)
    assert MemeDraftParser().parse(text).quote
    assert len([c for c in chunks if c.content]) < 5 < len(text) // 10


async def test_callbacks_see_every_token(paced: LocalPoeServer) -> None:
    local_poe = paced

    class Tokens(AsyncCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        async def on_llm_new_token(self, token: str | list[str | dict[str, Any]], **kwargs: Any) -> None:
            self.tokens.append(str(token))

    handler = Tokens()
    message = await chat(local_poe).ainvoke(MEME_PROMPT, {"callbacks": [handler]})
    assert "".join(handler.tokens) == message.content and len(handler.tokens) > 3


def test_ls_params_name_the_provider_and_model() -> None:
    params = ChatPoe(model="Claude-Sonnet-4", api_key="k" * 32, temperature=0.2)._get_ls_params()
    assert params["ls_provider"] == "poe" and params["ls_model_name"] == "Claude-Sonnet-4"
    assert params["ls_temperature"] == 0.2


def test_missing_key_is_a_clear_error() -> None:
    with pytest.raises(PoeAuthError, match="POE_API_KEY"):
        ChatPoe(model="GPT-4o").invoke("hi")


class TestChatPoeUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatPoe]:
        return ChatPoe

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "GPT-4o-Mini", "api_key": "k" * 32}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"POE_API_KEY": "e" * 32, "MEMEBOT_POE_URL": "http://127.0.0.1:9/"},
            {},
            {
                "api_key": "e" * 32,
                "poe_url": "http://127.0.0.1:9/",
            },
        )

    @property
    def has_tool_calling(self) -> bool:
        return False  # Poe's bot query API has tools only for some bots; ChatPoe does not offer them

    @property
    def has_structured_output(self) -> bool:
        return False


@pytest.fixture(scope="class")
def integration_poe(poe_server: LocalPoeServer) -> LocalPoeServer:
    poe_server.platform.set_knobs(KnobSet())
    return poe_server


@pytest.mark.usefixtures("integration_poe")
class TestChatPoeIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _point_at_local_poe(self, integration_poe: LocalPoeServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MEMEBOT_POE_URL", integration_poe.url)
        monkeypatch.setenv("POE_API_KEY", USER_API_KEY)

    @property
    def chat_model_class(self) -> type[ChatPoe]:
        return ChatPoe

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "GPT-4o-Mini"}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return False  # Poe's protocol reports no token counts

    @property
    def supports_image_urls(self) -> bool:
        return False  # supported by ChatPoe, but the suite fetches a picture from the internet


def test_aimessagechunk_concatenation(local_poe: LocalPoeServer) -> None:
    chunks = list(chat(local_poe).stream(MEME_PROMPT))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert isinstance(total, AIMessageChunk) and "quote" in str(total.content)


def test_messages_convert_both_ways_with_attachments() -> None:
    from fastapi_poe import Attachment, ProtocolMessage

    from chains.messages import from_protocol_messages, to_protocol_messages

    photo = Attachment(url="https://pfst.cf2.poecdn.net/base/image/cat.jpg", content_type="image/jpeg", name="cat.jpg")
    poe = [
        ProtocolMessage(role="system", content="be brief"),
        ProtocolMessage(role="user", content="meme this", attachments=[photo]),
        ProtocolMessage(role="bot", content="**Monday.**"),
    ]
    langchain = from_protocol_messages(poe)
    assert [m.type for m in langchain] == ["system", "human", "ai"]
    assert langchain[1].content == [
        {"type": "text", "text": "meme this"},
        {"type": "image", "url": photo.url, "mime_type": "image/jpeg"},
    ]
    back = to_protocol_messages(langchain)
    assert [(m.role, m.content) for m in back] == [(m.role, m.content) for m in poe]
    assert [a.url for a in back[1].attachments] == [photo.url] and back[1].attachments[0].content_type == "image/jpeg"
    with pytest.raises(ValueError, match="upload"):
        to_protocol_messages(
            [HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}])]
        )


async def test_calls_reuse_one_connection(local_poe: LocalPoeServer) -> None:
    # fastapi_poe stops reading at `done`; the rest of the body is read on close so the connection stays alive.
    model = chat(local_poe)
    for _ in range(3):
        await model.ainvoke(MEME_PROMPT)
    peers = {r["peer"] for r in local_poe.platform.requests("GPT-4o-Mini")}
    assert len(peers) == 1 and next(iter(peers))
