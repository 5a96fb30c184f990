"""The original Meme-Creator bot's flow, written plainly: the baseline every benchmark compares us with.

The original is memes_creator.py in github.com/iamshaynez/poe-bot-master (fastapi-poe 0.0.34, 2024). Its structure
is kept: one PoeBot; a numbered prompt asking for a JSON block; the whole text reply read with `get_final_response`;
`image_prompt` and the quote pulled out with regular expressions; the quote yielded in double quotes; then the
image bot, with ", digital painting" added to the prompt; both bots called with the access key Poe sends in the
request. Fixed: the image bot is read with `stream_request` and the picture taken from its `file` attachment (the
original used `get_final_response` there, which drops attachments, so it broke when Poe's image bots moved to
attachments), and it is shown the way the original showed the image bot's answer: as a Markdown image link.
Adapted: the JSON field is `quote` (the draft shape all our bots use) and the topic sits in `<topic>` tags, so
localpoe's offline writer, which fills its templates from that tag, writes both bots the same draft. Its debug
prints are left out.

"As its author would" about HTTP clients: the original passes no `session=`, so fastapi_poe builds (and tears
down) an httpx client for every bot call, and so does `app`. `create_pooled_app` is the strongest baseline: the
same flow with one httpx client shared by every call, made and closed in the app's lifespan.

    uvicorn benchmarks.seed_flow:app                                # or: python benchmarks/seed_flow.py
    uvicorn --factory benchmarks.seed_flow:create_pooled_app        # or: python benchmarks/seed_flow.py --seed-pooled
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import fastapi_poe as fp
import httpx
from fastapi import FastAPI

LLM_MODEL: Final = os.environ.get("MEMEBOT_TEXT_BOT", "Mistral-Large-2")
IMAGE_MODEL: Final = os.environ.get("MEMEBOT_IMAGE_BOT", "Playground-v3")
POE_BOT_URL: Final = "https://api.poe.com/bot/"

PROMPT: Final = """1. You are a comedian, good at sarcasm and at jokes with deep thoughts.
2. Create 10 humorous, sarcastic and deep meme jokes about <topic>{topic}</topic>.
3. Read through all the memes and pick the best one.
4. Print that one final meme in the JSON format below.

```json
"image_prompt": " ",
"quote": " "
```"""
IMAGE_PROMPT_RE: Final = re.compile(r'"image_prompt": "(.*?)"')
QUOTE_RE: Final = re.compile(r'"quote": "(.*?)"')


def extract(pattern: re.Pattern[str], reply: str) -> str:
    """The first match's group, or "ERROR" as the original had it."""
    match = pattern.search(reply)
    return match.group(1) if match else "ERROR"


@dataclass
class SeedMemeBot(fp.PoeBot):
    """Topic -> text bot (whole reply) -> regex -> image bot (attachment) -> quote and picture."""

    bot_url: str = POE_BOT_URL
    session: httpx.AsyncClient | None = None  # None: fastapi_poe builds a client per call, as in the original

    async def get_response(self, request: fp.QueryRequest) -> AsyncIterable[fp.PartialResponse]:
        topic = request.query[-1].content
        # The original rewrites the incoming request in place before each call; so does this.
        request.query = [fp.ProtocolMessage(role="user", content=PROMPT.format(topic=topic))]
        meme = await fp.get_final_response(
            request, bot_name=LLM_MODEL, api_key=request.access_key, session=self.session, base_url=self.bot_url
        )
        image_prompt = extract(IMAGE_PROMPT_RE, meme)
        quote = extract(QUOTE_RE, meme)
        yield fp.PartialResponse(text=f'"{quote}"\n')

        request.query = [fp.ProtocolMessage(role="user", content=f"{image_prompt}, digital painting")]
        async for message in fp.stream_request(
            request, bot_name=IMAGE_MODEL, api_key=request.access_key, session=self.session, base_url=self.bot_url
        ):
            if message.attachment is not None:
                yield fp.PartialResponse(text=f"![meme]({message.attachment.url})")

    async def get_settings(self, setting: fp.SettingsRequest) -> fp.SettingsResponse:
        return fp.SettingsResponse(server_bot_dependencies={LLM_MODEL: 1, IMAGE_MODEL: 1})


def _bot_url() -> str:
    root = os.environ.get("MEMEBOT_POE_URL", "").strip()
    return (root.rstrip("/") + "/bot/") if root else POE_BOT_URL


def create_app() -> FastAPI:
    """The seed's flow as its author deployed it: no shared HTTP client."""
    bot = SeedMemeBot(bot_url=_bot_url())
    return fp.make_app(bot, access_key=os.environ["POE_ACCESS_KEY"])


def create_pooled_app() -> FastAPI:
    """The seed's flow with one httpx client shared by every bot call: the strongest baseline."""
    bot = SeedMemeBot(bot_url=_bot_url())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=600) as session:
            bot.session = session
            yield

    return fp.make_app(bot, access_key=os.environ["POE_ACCESS_KEY"], app=FastAPI(lifespan=lifespan))


def __getattr__(name: str) -> Any:
    # `uvicorn benchmarks.seed_flow:app` builds the app on first access, so importing needs no key.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)


def main() -> None:
    """Serve the seed's flow (POE_ACCESS_KEY and MEMEBOT_POE_URL from the environment)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed-pooled", action="store_true", help="share one httpx client across bot calls")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    uvicorn.run(create_pooled_app() if args.seed_pooled else create_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
