"""The meme chain over the local Poe platform: streaming order, swappable steps, image sources and fallbacks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableLambda

from chains import GeneratedImage, Meme, MemeProgress, PoeImageGenerator, PoeNoImage, build_meme_chain
from chains.meme import MemeStep
from localpoe import BotKnobs, FaultKind, KnobSet, LocalPoeServer
from tests.conftest import USER_API_KEY

TOPIC = {"topic": "Monday mornings", "language": "en"}


def meme_chain(server: LocalPoeServer, **kwargs: Any) -> Runnable[Any, MemeStep]:
    options: dict[str, Any] = {"poe_url": server.url, "api_key": USER_API_KEY, "caption": False, **kwargs}
    return build_meme_chain(**options)


async def collect(chain: Runnable[Any, MemeStep], request: Any = TOPIC) -> list[MemeStep]:
    return [step async for step in chain.astream(request)]


async def test_image_bot_starts_before_the_quote_has_finished_streaming(local_poe: LocalPoeServer) -> None:
    local_poe.platform.set_knobs(KnobSet(default=BotKnobs(tokens_per_second=60, image_delay_s=0.3)))
    steps = await collect(meme_chain(local_poe))
    progress = [s for s in steps if isinstance(s, MemeProgress)]
    first_drawing = next(i for i, s in enumerate(progress) if s.drawing)
    quote_done = next(i for i, s in enumerate(progress) if s.draft.quote_complete)
    assert first_drawing < quote_done
    assert any(s.drawing and s.draft.quote and not s.draft.quote_complete for s in progress)  # quote still streaming
    meme = steps[-1]
    assert isinstance(meme, Meme) and meme.quote and meme.image_prompt
    assert meme.image.url.startswith(local_poe.url) and meme.image.bot_name == "FLUX-schnell"
    png = await meme.image.aread()
    assert png.startswith(b"\x89PNG")


async def test_ainvoke_returns_the_finished_meme(local_poe: LocalPoeServer) -> None:
    meme = await meme_chain(local_poe).ainvoke("猫和键盘")
    assert isinstance(meme, Meme)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in meme.quote)


def test_sync_invoke(local_poe: LocalPoeServer) -> None:
    meme = meme_chain(local_poe).invoke(TOPIC)
    assert isinstance(meme, Meme) and meme.image.read().startswith(b"\x89PNG")


async def test_text_and_image_bots_swap_by_name(local_poe: LocalPoeServer) -> None:
    chain = meme_chain(local_poe).with_config(
        configurable={"text_bot": "Claude-3.5-Sonnet", "image_bot": "DALL-E-3", "aspect_ratio": "16:9"}
    )
    meme = await chain.ainvoke(TOPIC)
    assert isinstance(meme, Meme) and meme.image.bot_name == "DALL-E-3"
    bots = local_poe.platform.stats()["bots"]
    assert bots["Claude-3.5-Sonnet"]["started"] == 1 and bots["DALL-E-3"]["started"] == 1
    assert "GPT-4o-Mini" not in bots and "FLUX-schnell" not in bots
    drawn = local_poe.platform.requests("DALL-E-3")[-1]["request"]["query"][-1]
    assert drawn["content"].endswith("--aspect 16:9") and drawn["parameters"] == {"aspect_ratio": "16:9"}


async def test_prompt_variant_swaps_the_system_prompt(local_poe: LocalPoeServer) -> None:
    await meme_chain(local_poe).ainvoke(TOPIC)
    await meme_chain(local_poe).with_config(configurable={"prompt_variant": "v2"}).ainvoke(TOPIC)
    first, second = (r["request"]["query"][0]["content"] for r in local_poe.platform.requests("GPT-4o-Mini")[-2:])
    assert first != second and "comedy writer" in second


async def test_any_langchain_chat_model_can_write_the_meme(local_poe: LocalPoeServer) -> None:
    draft = json.dumps({"image_prompt": "a cat asleep on a laptop keyboard", "quote": "Ctrl+Z my whole week"})
    fake = GenericFakeChatModel(messages=iter([AIMessage(content=draft)]))
    chain = meme_chain(local_poe, chat_models={"fake": fake}).with_config(configurable={"chat_model": "fake"})
    meme = await chain.ainvoke(TOPIC)
    assert isinstance(meme, Meme) and meme.quote == "Ctrl+Z my whole week"
    assert "GPT-4o-Mini" not in local_poe.platform.stats()["bots"]
    assert local_poe.platform.requests("FLUX-schnell")[-1]["request"]["query"][-1]["content"].startswith("a cat asleep")


async def test_a_custom_image_step_replaces_the_image_bot(local_poe: LocalPoeServer) -> None:
    def stock_photo(prompt: str) -> GeneratedImage:
        return GeneratedImage(url="https://example.org/stock.png", bot_name="stock", prompt=prompt, data=b"\x89PNG")

    chain = meme_chain(local_poe, image_steps={"stock": RunnableLambda(stock_photo)})
    meme = await chain.with_config(configurable={"image_step": "stock"}).ainvoke(TOPIC)
    assert isinstance(meme, Meme) and meme.image.bot_name == "stock"
    assert "FLUX-schnell" not in local_poe.platform.stats()["bots"]


async def test_fallback_image_bot_draws_when_the_first_one_fails(local_poe: LocalPoeServer) -> None:
    local_poe.platform.set_knobs(
        KnobSet(bots={"FLUX-schnell": BotKnobs(fault_rate=1.0, fault_kinds=[FaultKind.ERROR])})
    )
    meme = await meme_chain(local_poe, fallback_image_bot="Imagen-3", max_retries=0).ainvoke(TOPIC)
    assert isinstance(meme, Meme) and meme.image.bot_name == "Imagen-3"


async def test_legacy_image_bot_markdown_link_is_understood(local_poe: LocalPoeServer) -> None:
    painter = PoeImageGenerator(bot_name="StableDiffusionXL", api_key=USER_API_KEY, poe_url=local_poe.url)
    image = await painter.ainvoke("a lighthouse at dusk")
    assert image.url.startswith(local_poe.url)
    assert (await image.aread()).startswith(b"\x89PNG")


async def test_text_only_answer_from_an_image_bot_is_a_clear_error(local_poe: LocalPoeServer) -> None:
    painter = PoeImageGenerator(bot_name="GPT-4o-Mini", api_key=USER_API_KEY, poe_url=local_poe.url)
    with pytest.raises(PoeNoImage, match="sent no picture"):
        await painter.ainvoke("a lighthouse at dusk")


async def test_image_generator_shows_up_in_callbacks(local_poe: LocalPoeServer) -> None:
    from langchain_core.tracers.context import collect_runs

    with collect_runs() as runs:
        await meme_chain(local_poe).ainvoke(TOPIC)
    names: set[str] = set()
    stack = list(runs.traced_runs)
    while stack:
        run = stack.pop()
        names.add(run.name)
        stack.extend(run.child_runs)
    assert {"MemeChain", "ChatPoe", "MemeDraftParser", "Illustrator", "PoeImageGenerator"} <= names
