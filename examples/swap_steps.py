"""Swap the meme chain's steps without editing it: another chat model, a custom image step, another prompt.

    python examples/swap_steps.py [OUT_DIR]

Runs offline: the Poe parts talk to a local Poe platform started here. Every swap is a `configurable` value.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sys
from pathlib import Path

from langchain_core.language_models import BaseChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda
from PIL import Image, ImageDraw

from chains import GeneratedImage, build_meme_chain
from chains.meme import Meme
from localpoe import LocalPoeServer


def any_chat_model() -> BaseChatModel:
    """Any LangChain chat model writes the meme: ChatAnthropic, ChatOpenAI, ChatOllama, ...

    For instance `ChatAnthropic(model="claude-sonnet-4-0")`. A scripted model keeps this example offline.
    """
    draft = {"image_prompt": "a sleepy owl holding a coffee mug at dawn", "quote": "Monday:\nI'm up. Barely."}
    return GenericFakeChatModel(messages=iter([AIMessage(content=json.dumps(draft))]))


def sketch(prompt: str) -> GeneratedImage:
    """A custom image step: any Runnable from a picture description to a GeneratedImage (here, drawn locally)."""
    red, green, blue = hashlib.sha256(prompt.encode()).digest()[:3]
    image = Image.new("RGB", (768, 768), (red, green, blue))
    ImageDraw.Draw(image).ellipse((184, 184, 584, 584), fill=(255 - red, 255 - green, 255 - blue))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return GeneratedImage(url="memory://sketch.png", bot_name="sketch", prompt=prompt, data=buffer.getvalue())


SWAPS: dict[str, dict[str, str]] = {
    "default": {},
    "other-bots": {"text_bot": "Claude-3-Haiku", "image_bot": "DALL-E-3"},
    "prompt-v2": {"prompt_variant": "v2"},
    "my-model-and-image-step": {"chat_model": "mine", "image_step": "sketch"},
}


async def make_memes(topic: str) -> dict[str, Meme]:
    """One meme per swap, all from the same chain."""
    async with LocalPoeServer() as poe:
        chain = build_meme_chain(
            poe_url=poe.url,
            api_key=poe.api_key,
            chat_models={"mine": any_chat_model()},
            image_steps={"sketch": RunnableLambda(sketch, name="Sketch")},
        )
        memes: dict[str, Meme] = {}
        for name, configurable in SWAPS.items():
            meme = await chain.with_config(configurable=configurable).ainvoke(topic)
            assert isinstance(meme, Meme)
            memes[name] = meme
        return memes


def main(out_dir: Path) -> None:
    """Make the memes and save each as OUT_DIR/<swap>.jpg."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, meme in asyncio.run(make_memes("Monday mornings")).items():
        path = out_dir / f"{name}.jpg"
        path.write_bytes(meme.picture or meme.image.read())
        quote = meme.quote.replace("\n", " / ")
        print(f"{name:24} {meme.image.bot_name:14} {quote}  -> {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "swapped-memes"))
