"""Shared fixtures: every test runs isolated from the developer's environment, against real loopback servers."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI

from bot.config import BotConfig
from localpoe import KnobSet, LocalPoeServer
from server import create_app
from tests.threaded_server import ThreadedUvicorn

_ISOLATED_PREFIXES = ("POE_", "MEMEBOT_", "LANGSMITH_", "LANGCHAIN_")
USER_API_KEY = secrets.token_hex(16)
"""A Poe user API key the local platform accepts (what the CLI and notebooks use)."""
BOT_ACCESS_KEY = secrets.token_hex(16)
"""The bot's access key: Poe checks it on calls the bot makes, the bot checks it on Poe's requests."""


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's Poe keys, bot choices or tracing settings."""
    import os

    for name in list(os.environ):
        if name.startswith(_ISOLATED_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def poe_server() -> Iterator[LocalPoeServer]:
    """The local Poe platform on a free loopback port, checking keys strictly."""
    with LocalPoeServer(api_keys={USER_API_KEY, BOT_ACCESS_KEY}) as server:
        yield server


@pytest.fixture
def local_poe(poe_server: LocalPoeServer) -> Iterator[LocalPoeServer]:
    """The platform with counters, recordings and knobs reset for this test."""
    poe_server.platform.reset()
    poe_server.platform.set_knobs(KnobSet())
    yield poe_server
    poe_server.platform.set_knobs(KnobSet())


@pytest.fixture
def access_key() -> str:
    """The bot's access key, in Poe's shape (32 letters and digits)."""
    return BOT_ACCESS_KEY


@pytest.fixture
def api_key() -> str:
    """A Poe user API key the local platform accepts."""
    return USER_API_KEY


@pytest.fixture
def bot_config(local_poe: LocalPoeServer, access_key: str) -> BotConfig:
    """The bot's configuration pointed at the local platform, which accepts the bot's key."""
    return BotConfig(
        POE_ACCESS_KEY=access_key,
        MEMEBOT_POE_URL=local_poe.url,
        MEMEBOT_TEXT_BOT="GPT-4o-Mini",
        MEMEBOT_IMAGE_BOT="FLUX-schnell",
        MEMEBOT_FALLBACK_IMAGE_BOT="Imagen-3",
        MEMEBOT_TEXT_TIMEOUT_S=20,
        MEMEBOT_IMAGE_TIMEOUT_S=20,
    )


@pytest.fixture
def serve_bot() -> Iterator[Callable[[FastAPI], str]]:
    """Start an ASGI app under uvicorn on a free loopback port; returns its URL."""
    started: list[ThreadedUvicorn] = []

    def start(app: FastAPI) -> str:
        server = ThreadedUvicorn(app).start()
        started.append(server)
        return server.url

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def bot_url(bot_config: BotConfig, serve_bot: Callable[[FastAPI], str]) -> str:
    """The meme bot, served by uvicorn, pointed at the local Poe platform."""
    return serve_bot(create_app(bot_config))
