"""localpoe over real loopback HTTP, driven by fastapi_poe's own client."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import fastapi_poe as fp
import httpx
import pytest
from fastapi_poe.client import AttachmentUploadError
from fastapi_poe.types import Attachment, PartialResponse
from PIL import Image

from localpoe import BotCall, BotKnobs, FaultKind, KnobSet, LocalPoe, LocalPoeServer, knobs_from_cli

KEY = "test-key-0123456789abcdef0123456"  # strict mode: the only key the platform accepts
CJK = re.compile(r"[\u4e00-\u9fff]")


def _quiet(exc: Exception, message: str) -> None:
    """fastapi_poe's on_error hook; the tests assert on the raised errors instead of printed ones."""


@pytest.fixture(scope="module")
def poe() -> Iterator[LocalPoeServer]:
    """One strict-mode server for the module."""
    with LocalPoeServer(api_keys={KEY}) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_platform(poe: LocalPoeServer) -> None:
    """Each test starts with no knobs, no faults and no recordings."""
    poe.platform.set_knobs(KnobSet())
    poe.platform.cost_status = "success"
    poe.platform.reset()


@pytest.fixture
async def session() -> AsyncIterator[httpx.AsyncClient]:
    """A shared client, as the project passes to fastapi_poe."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def query(
    text: str, *, attachments: list[Attachment] | None = None, parameters: dict[str, Any] | None = None
) -> fp.QueryRequest:
    """A QueryRequest whose last user message is `text`; carries the key in its body to check redaction."""
    message = fp.ProtocolMessage(role="user", content=text, attachments=attachments or [], parameters=parameters or {})
    return fp.QueryRequest(
        version="1.2",
        type="query",
        query=[message],
        user_id="u1",
        conversation_id="c1",
        message_id="m1",
        access_key=KEY,
        api_key=KEY,
        bot_query_id="bq-1",
    )


async def collect(
    poe: LocalPoeServer, session: httpx.AsyncClient, bot: str, request: fp.QueryRequest, key: str = KEY
) -> list[PartialResponse]:
    """Every message stream_request yields, with no retries."""
    return [
        message
        async for message in fp.stream_request(
            request, bot, key, session=session, base_url=poe.bot_url, num_tries=1, on_error=_quiet
        )
    ]


def final_text(messages: list[PartialResponse]) -> str:
    """The text a user would see (replace_response clears what came before)."""
    text = ""
    for message in messages:
        if isinstance(message, fp.MetaResponse) or message.is_suggested_reply:
            continue
        text = message.text if message.is_replace_response else text + message.text
    return text


async def admin_get(poe: LocalPoeServer, session: httpx.AsyncClient, path: str) -> Any:
    """GET a /_localpoe endpoint with the key (strict mode guards them)."""
    response = await session.get(poe.url + path, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


def png_of(data: bytes) -> Image.Image:
    """Decode PNG bytes (fails the test when they are not a PNG)."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_not_flat(image: Image.Image) -> None:
    """At least one channel spans a real range: not a single-colour square."""
    histograms = [band.histogram() for band in image.convert("RGB").split()]
    used = [[level for level, count in enumerate(histogram) if count] for histogram in histograms]
    assert any(levels[-1] - levels[0] > 60 for levels in used), [(levels[0], levels[-1]) for levels in used]


# --- text bots ---------------------------------------------------------------------------------------------


async def test_text_bot_streams_meme_json_in_many_chunks(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    messages = await collect(poe, session, "GPT-4o", query("<topic>\nMonday mornings\n</topic>"))
    assert isinstance(messages[0], fp.MetaResponse)
    texts = [m for m in messages[1:] if m.text]
    assert len(texts) >= 20  # streamed token by token, not in one piece
    draft = json.loads(final_text(messages))
    assert list(draft) == ["image_prompt", "quote"]
    assert "Monday mornings" in draft["image_prompt"]
    assert draft["quote"].strip()


async def test_chinese_topic_gives_chinese_quote(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    messages = await collect(poe, session, "Claude-3-Haiku", query("<topic>周一早上的地铁</topic>"))
    assert CJK.search(json.loads(final_text(messages))["quote"])


async def test_language_tag_picks_the_language(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    prompt = "<topic>coffee</topic>\n<language>zh</language>"
    messages = await collect(poe, session, "Mistral-Large-2", query(prompt))
    assert CJK.search(json.loads(final_text(messages))["quote"])


async def test_writer_is_deterministic_and_names_are_case_insensitive(
    poe: LocalPoeServer, session: httpx.AsyncClient
) -> None:
    first = final_text(await collect(poe, session, "Gemini-2.0-Flash", query("<topic>cats</topic>")))
    second = final_text(await collect(poe, session, "gemini-2.0-flash", query("<topic>cats</topic>")))
    assert first == second


async def test_refinement_instructions_are_honoured(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    base = json.loads(final_text(await collect(poe, session, "GPT-4o", query("<topic>homework</topic>"))))
    previous = f"<previous_draft>{json.dumps(base)}</previous_draft>"

    async def refine(instruction: str) -> dict[str, str]:
        text = f"<topic>homework</topic>\n<instruction>{instruction}</instruction>\n{previous}"
        draft: dict[str, str] = json.loads(final_text(await collect(poe, session, "GPT-4o", query(text))))
        return draft

    kept_quote = await refine("keep the quote, different art style")
    assert kept_quote["quote"] == base["quote"]
    assert kept_quote["image_prompt"] != base["image_prompt"]
    kept_picture = await refine("keep the picture, but darker")
    assert kept_picture["image_prompt"] == base["image_prompt"]
    darker = await refine("darker")
    assert "darker" in darker["image_prompt"]
    assert darker["quote"] != base["quote"]
    chinese = await refine("in Chinese")
    assert CJK.search(chinese["quote"])


async def test_image_attachment_takes_the_vision_path(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    photo = Attachment(url=poe.url + "files/x/beach.jpg", content_type="image/jpeg", name="beach.jpg")
    messages = await collect(poe, session, "Claude-Sonnet-4", query("make a meme of this", attachments=[photo]))
    draft = json.loads(final_text(messages))
    assert "beach.jpg" in draft["quote"]
    assert "beach.jpg" in draft["image_prompt"]


async def test_unknown_bot_is_an_error_without_retry(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    with pytest.raises(fp.BotErrorNoRetry, match="does not exist"):
        await collect(poe, session, "No-Such-Bot", query("hi"))
    stats = await admin_get(poe, session, "_localpoe/stats")
    assert stats["unknown_bots"] == {"No-Such-Bot": 1}


async def test_settings_request_on_a_bot(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    response = await session.post(
        poe.bot_url + "FLUX-dev",
        json={"version": "1.2", "type": "settings"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200
    settings = fp.SettingsResponse.model_validate(response.json())
    assert settings.introduction_message is not None
    assert "Offline painter" in settings.introduction_message


# --- image bots --------------------------------------------------------------------------------------------


async def test_image_bot_answers_with_a_png_attachment(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    messages = await collect(poe, session, "FLUX-schnell", query("a corgi on a beach at sunset --aspect 16:9"))
    assert any(m.text.startswith("Generating") for m in messages)
    attachments = [m.attachment for m in messages if m.attachment is not None]
    assert len(attachments) == 1
    assert attachments[0].content_type == "image/png"
    assert attachments[0].url.startswith(poe.url + "files/")
    response = await session.get(attachments[0].url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = png_of(response.content)
    assert image.size == (1024, 576)
    assert_not_flat(image)


async def test_image_aspect_from_parameters_and_default(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    for parameters, size in (({"aspect_ratio": "3:4"}, (768, 1024)), ({}, (1024, 1024))):
        messages = await collect(poe, session, "Imagen-3", query("a lighthouse in the rain", parameters=parameters))
        attachment = next(m.attachment for m in messages if m.attachment is not None)
        assert png_of((await session.get(attachment.url)).content).size == size


async def test_legacy_image_bot_answers_with_a_markdown_link(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    messages = await collect(poe, session, "StableDiffusionXL", query("a castle made of cheese"))
    assert all(m.attachment is None for m in messages)
    match = re.fullmatch(r"!\[image\]\((http://[^)]+)\)", final_text(messages))
    assert match is not None
    assert_not_flat(png_of((await session.get(match.group(1))).content))


# --- uploads -----------------------------------------------------------------------------------------------


async def test_upload_bytes_then_by_url(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    uploaded = await fp.upload_file(
        file=b"hello, meme", file_name="hello.txt", api_key=KEY, base_url=poe.upload_base_url, num_tries=1
    )
    assert uploaded.content_type == "text/plain"
    assert (await session.get(uploaded.url)).content == b"hello, meme"

    by_url = await fp.upload_file(
        file_url=uploaded.url, file_name="copy.txt", api_key=KEY, base_url=poe.upload_base_url, num_tries=1
    )
    assert by_url.url != uploaded.url
    assert (await session.get(by_url.url)).content == b"hello, meme"

    png = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(png, format="PNG")
    image = await fp.upload_file(file=png.getvalue(), file_name="noext", api_key=KEY, base_url=poe.upload_base_url)
    assert image.content_type == "image/png"  # sniffed from the bytes, not the name
    assert (await admin_get(poe, session, "_localpoe/stats"))["uploads"] == 3


# --- auth --------------------------------------------------------------------------------------------------


async def test_wrong_keys_are_refused_with_401(poe: LocalPoeServer) -> None:
    statuses: list[int] = []

    async def remember(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async with httpx.AsyncClient(event_hooks={"response": [remember]}) as client:
        with pytest.raises(fp.BotError):
            await collect(poe, client, "GPT-4o", query("<topic>x</topic>"), key="wrong-key")
        assert statuses == [401]
        unguarded = await client.get(poe.url + "_localpoe/stats")
        assert unguarded.status_code == 401
    with pytest.raises(AttachmentUploadError, match="401"):
        await fp.upload_file(file=b"x", file_name="x.txt", api_key="wrong", base_url=poe.upload_base_url, num_tries=1)
    assert poe.platform.stats()["unauthorized"] == 3


# --- settings sync and cost --------------------------------------------------------------------------------


async def test_settings_sync_is_recorded(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    settings = {"server_bot_dependencies": {"GPT-4o": 1, "FLUX-schnell": 1}, "introduction_message": "Hi"}
    await asyncio.to_thread(fp.sync_bot_settings, "MemeBot", KEY, settings=settings, base_url=poe.bot_url)
    recorded = await admin_get(poe, session, "_localpoe/settings/MemeBot")
    assert recorded["kind"] == "update"
    assert recorded["settings"] == settings

    await asyncio.to_thread(fp.sync_bot_settings, "MemeBot", KEY, base_url=poe.bot_url)
    assert (await admin_get(poe, session, "_localpoe/settings/MemeBot"))["kind"] == "fetch"

    with pytest.raises(fp.BotError):
        await asyncio.to_thread(fp.sync_bot_settings, "MemeBot", "bad", settings=settings, base_url=poe.bot_url)
    with pytest.raises(fp.BotError, match="invalid settings"):
        await asyncio.to_thread(fp.sync_bot_settings, "MemeBot", KEY, settings={"nope": 1}, base_url=poe.bot_url)
    assert (await admin_get(poe, session, "_localpoe/stats"))["settings_syncs"] == 2


async def test_cost_capture_and_authorize(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    bot = fp.PoeBot(access_key=KEY)
    request = query("hi")
    await bot.capture_cost(request, fp.CostItem(amount_usd_milli_cents=250, description="meme"), base_url=poe.url)
    await bot.authorize_cost(request, [fp.CostItem(amount_usd_milli_cents=100)], base_url=poe.url)
    costs = await admin_get(poe, session, "_localpoe/costs")
    assert [(c["bot_query_id"], c["action"]) for c in costs] == [("bq-1", "capture"), ("bq-1", "authorize")]
    assert costs[0]["amounts"] == [{"amount_usd_milli_cents": 250, "description": "meme"}]
    assert KEY not in json.dumps(costs)

    poe.platform.cost_status = "insufficient_funds"
    with pytest.raises(fp.InsufficientFundError):
        await bot.capture_cost(request, fp.CostItem(amount_usd_milli_cents=1), base_url=poe.url)
    with pytest.raises(fp.CostRequestError, match="401"):
        await fp.PoeBot(access_key="wrong").capture_cost(request, fp.CostItem(amount_usd_milli_cents=1), poe.url)
    assert (await admin_get(poe, session, "_localpoe/stats"))["cost_calls"] == 3


# --- faults ------------------------------------------------------------------------------------------------


def inject(poe: LocalPoeServer, bot: str, kind: FaultKind, **extra: Any) -> None:
    """Make every call to `bot` get the fault `kind`."""
    poe.platform.update_knobs(bot, fault_rate=1.0, fault_kinds=[kind], **extra)


async def test_fault_error(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    inject(poe, "GPT-4o", FaultKind.ERROR)
    with pytest.raises(fp.BotError, match="Internal bot error") as caught:
        await collect(poe, session, "GPT-4o", query("<topic>x</topic>"))
    assert not isinstance(caught.value, fp.BotErrorNoRetry)
    assert json.loads(str(caught.value))["allow_retry"] is True


async def test_fault_rate_limit(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    inject(poe, "GPT-4o", FaultKind.RATE_LIMIT)
    with pytest.raises(fp.BotError, match="rate limit"):
        await collect(poe, session, "GPT-4o", query("<topic>x</topic>"))


async def test_fault_garbage(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    inject(poe, "GPT-4o", FaultKind.GARBAGE)
    text = final_text(await collect(poe, session, "GPT-4o", query("<topic>cats</topic>")))
    assert "cats" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_fault_truncated(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    inject(poe, "GPT-4o", FaultKind.TRUNCATED)
    text = final_text(await collect(poe, session, "GPT-4o", query("<topic>cats</topic>")))
    assert text.startswith('{"image_prompt": "')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert poe.platform.stats()["bots"]["GPT-4o"]["completed"] == 1  # cut, but properly finished with done


async def test_fault_http_500(poe: LocalPoeServer) -> None:
    inject(poe, "FLUX-dev", FaultKind.HTTP_500)
    statuses: list[int] = []

    async def remember(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async with httpx.AsyncClient(event_hooks={"response": [remember]}) as client:
        with pytest.raises(fp.BotError, match="Error communicating with bot FLUX-dev"):
            await collect(poe, client, "FLUX-dev", query("a cat"))
    assert statuses == [500]


async def test_fault_drop(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    inject(poe, "GPT-4o", FaultKind.DROP)
    seen: list[str] = []
    with pytest.raises(fp.BotError) as caught:
        async for message in fp.stream_request(
            query("<topic>cats</topic>"), "GPT-4o", KEY, session=session, base_url=poe.bot_url, num_tries=1
        ):
            seen.append(message.text)
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    assert "".join(seen).startswith('{"image_prompt"')  # some text came before the cut
    stats = poe.platform.stats()["bots"]["GPT-4o"]
    assert stats["faults"] == {"drop": 1}
    assert stats["completed"] == 0


async def test_fault_stall(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    inject(poe, "GPT-4o", FaultKind.STALL, stall_s=5.0)
    stream = fp.stream_request(
        query("<topic>cats</topic>"), "GPT-4o", KEY, session=session, base_url=poe.bot_url, num_tries=1
    )
    assert isinstance(await anext(stream), fp.MetaResponse)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.4):
            await anext(stream)
    await stream.aclose()


async def test_fault_draws_are_seeded(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    poe.platform.set_knobs(KnobSet(bots={"Claude-3-Haiku": BotKnobs(fault_rate=0.5)}, seed=7))

    async def outcomes() -> list[bool]:
        results = []
        for _ in range(8):
            try:
                await collect(poe, session, "Claude-3-Haiku", query("<topic>x</topic>"))
                results.append(True)
            except fp.BotError:
                results.append(False)
        return results

    first = await outcomes()
    await session.post(poe.url + "_localpoe/reset", headers={"Authorization": f"Bearer {KEY}"})
    assert await outcomes() == first
    assert True in first and False in first


# --- pacing ------------------------------------------------------------------------------------------------


async def test_first_token_delay_and_token_rate(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    poe.platform.update_knobs("GPT-4o", first_token_delay_s=0.3, tokens_per_second=100.0)
    started = time.monotonic()
    arrivals = []
    async for message in fp.stream_request(
        query("<topic>trains</topic>"), "GPT-4o", KEY, session=session, base_url=poe.bot_url, num_tries=1
    ):
        if message.text:
            arrivals.append(time.monotonic())
    assert arrivals[0] - started >= 0.8 * 0.3
    assert arrivals[-1] - arrivals[0] >= 0.8 * (len(arrivals) - 1) / 100.0


async def test_image_delay(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    poe.platform.update_knobs(image_delay_s=0.5)  # the default for every bot
    started = time.monotonic()
    messages = await collect(poe, session, "Ideogram-v2", query("a red kite"))
    assert any(m.attachment for m in messages)
    assert time.monotonic() - started >= 0.8 * 0.5


# --- observability and knobs over HTTP ---------------------------------------------------------------------


async def test_counters_and_recorded_requests_over_http(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    inject(poe, "Llama-3.1-405B", FaultKind.ERROR)
    await collect(poe, session, "GPT-4o-Mini", query("<topic>first</topic>"))
    await collect(poe, session, "GPT-4o-Mini", query("<topic>second</topic>"))
    with pytest.raises(fp.BotError):
        await collect(poe, session, "Llama-3.1-405B", query("<topic>third</topic>"))

    stats = await admin_get(poe, session, "_localpoe/stats")
    assert stats["bots"]["GPT-4o-Mini"] == {"started": 2, "completed": 2, "errors": 0, "aborted": 0, "faults": {}}
    assert stats["bots"]["Llama-3.1-405B"]["faults"] == {"error": 1}

    response = await session.get(
        poe.url + "_localpoe/requests",
        params={"bot": "GPT-4o-Mini", "limit": 1},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert KEY not in response.text
    recorded = response.json()
    assert len(recorded) == 1
    assert recorded[0]["bot"] == "GPT-4o-Mini"
    assert recorded[0]["request"]["query"][0]["content"] == "<topic>second</topic>"
    assert "access_key" not in recorded[0]["request"]

    await session.post(poe.url + "_localpoe/reset", headers={"Authorization": f"Bearer {KEY}"})
    assert (await admin_get(poe, session, "_localpoe/stats"))["bots"] == {}
    assert await admin_get(poe, session, "_localpoe/requests") == []


async def test_knobs_put_and_patch_endpoints(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"default": {"tokens_per_second": 0}, "bots": {"GPT-4o": {"fault_rate": 1, "fault_kinds": ["rate_limit"]}}}
    put = await session.put(poe.url + "_localpoe/knobs", json=body, headers=headers)
    assert put.status_code == 200
    assert put.json()["bots"] == {"GPT-4o": {"fault_rate": 1.0, "fault_kinds": ["rate_limit"]}}
    with pytest.raises(fp.BotError, match="rate limit"):
        await collect(poe, session, "GPT-4o", query("<topic>x</topic>"))
    await collect(poe, session, "Claude-3.5-Sonnet", query("<topic>x</topic>"))  # other bots unaffected

    patch = await session.patch(
        poe.url + "_localpoe/knobs", json={"bots": {"GPT-4o": {"fault_rate": 0}}}, headers=headers
    )
    assert patch.json()["bots"]["GPT-4o"] == {"fault_rate": 0.0, "fault_kinds": ["rate_limit"]}
    await collect(poe, session, "GPT-4o", query("<topic>x</topic>"))

    bad = await session.put(poe.url + "_localpoe/knobs", json={"default": {"fault_kinds": ["boom"]}}, headers=headers)
    assert bad.status_code == 422
    assert (await admin_get(poe, session, "_localpoe/knobs"))["bots"]["GPT-4o"]["fault_rate"] == 0.0


def test_knobs_from_cli() -> None:
    knobs = knobs_from_cli(["fault_rate=0.25", "fault_kinds=error,stall", "FLUX-dev.image_delay_s=4"], seed=3)
    assert knobs.default.fault_kinds == [FaultKind.ERROR, FaultKind.STALL]
    assert knobs.for_bot("flux-dev").image_delay_s == 4.0
    assert knobs.for_bot("FLUX-dev").fault_rate == 0.25  # inherited from the default
    assert knobs.seed == 3
    with pytest.raises(ValueError, match="unknown knob"):
        knobs_from_cli(["speed=3"])


# --- extensibility and lifecycle ---------------------------------------------------------------------------


async def test_registered_custom_bot(poe: LocalPoeServer, session: httpx.AsyncClient) -> None:
    async def shout(call: BotCall) -> AsyncIterator[PartialResponse]:
        yield PartialResponse(text=call.last_user_message.upper())
        yield PartialResponse(text="again?", is_suggested_reply=True)

    poe.platform.register_bot("Shouter", shout)
    try:
        messages = await collect(poe, session, "Shouter", query("hello"))
    finally:
        poe.platform.unregister_bot("Shouter")
    assert final_text(messages) == "HELLO"
    assert [m.text for m in messages if m.is_suggested_reply] == ["again?"]


async def test_shutdown_is_quick_with_a_stalled_stream() -> None:
    platform = LocalPoe(knobs=KnobSet(default=BotKnobs(fault_rate=1, fault_kinds=[FaultKind.STALL])))
    server = LocalPoeServer(platform)
    async with server, httpx.AsyncClient() as client:
        stream = fp.stream_request(
            query("<topic>x</topic>"), "GPT-4o", "any-key", session=client, base_url=server.bot_url, num_tries=1
        )
        assert isinstance(await anext(stream), fp.MetaResponse)  # permissive mode: any non-empty key works
        pending = asyncio.ensure_future(anext(stream))
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        assert time.monotonic() - started < 1.0
        with pytest.raises(fp.BotError, match="shutting down"):
            await pending
