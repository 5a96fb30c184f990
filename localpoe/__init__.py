"""localpoe: a local stand-in for the Poe platform, speaking Poe's wire protocol over HTTP/SSE on loopback.

    with LocalPoeServer() as poe:            # or: async with LocalPoeServer(api_keys={"k" * 32}) as poe:
        fp.stream_request(request, "GPT-4o", poe.api_key, base_url=poe.bot_url)

Built-in offline bots: a meme writer under popular text-bot names, a painter under image-bot names
(answers with a `file` attachment) and a legacy painter answering with a markdown image link.
"""

from localpoe.app import create_app
from localpoe.events import BotCall, BotHandler
from localpoe.knobs import BotKnobs, FaultKind, KnobSet, knobs_from_cli
from localpoe.platform import LocalPoe
from localpoe.runner import LocalPoeServer, serve

__all__ = [
    "BotCall",
    "BotHandler",
    "BotKnobs",
    "FaultKind",
    "KnobSet",
    "LocalPoe",
    "LocalPoeServer",
    "create_app",
    "knobs_from_cli",
    "serve",
]
