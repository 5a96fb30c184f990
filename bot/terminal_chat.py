"""`memebot chat`: a terminal conversation with a running bot; pictures are saved and their paths shown."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
from rich.console import Console
from rich.markdown import Markdown

from bot.poe_conversation import PoeConversation

_INLINE_IMAGE = re.compile(r"!\[[^\]]*\]\[[^\]]+\]")


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def run_chat(url: str, access_key: str, save_dir: Path, console: Console) -> None:
    """Read lines from the terminal, send each to the bot, show its replies; an empty line or EOF ends it."""
    async with httpx.AsyncClient(timeout=130) as client:
        conversation = PoeConversation(url, access_key, client=client)
        console.print("[dim]Type a topic (empty line to quit). Suggested replies can be typed as their number.[/]")
        suggestions: list[str] = []
        turn = 0
        while True:
            try:
                line = console.input("[bold cyan]you>[/] ").strip()
            except EOFError:
                return
            if not line:
                return
            if line.isdigit() and 0 < int(line) <= len(suggestions):
                line = suggestions[int(line) - 1]
            reply = await conversation.send(line)
            turn += 1
            console.print(Markdown(_INLINE_IMAGE.sub("", reply.text).strip() or "(no text)"))
            for index, attachment in enumerate(reply.attachments):
                picture = await client.get(attachment.url)
                path = save_dir / f"turn{turn}-{index}-{attachment.name}"
                await asyncio.to_thread(_save, path, picture.content)
                console.print(f"[green]picture saved:[/] {path}")
            if reply.error:
                console.print(f"[red]{reply.error.get('text', 'error')}[/]")
            suggestions = reply.suggested_replies
            for index, suggestion in enumerate(suggestions, 1):
                console.print(f"  [dim]{index}.[/] {suggestion}")
