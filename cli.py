"""`memebot`: make a meme, serve the bot, chat with it, or run the local Poe platform."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from langchain_core.runnables import Runnable
from rich.console import Console
from rich.live import Live
from rich.text import Text

from bot.config import BotConfig
from bot.language import detect_language
from bot.replies import explain
from chains.caption import OutputFormat
from chains.meme import Meme, MemeProgress, MemeStep, build_meme_chain
from chains.secrets import install_log_redaction
from chains.tracing import flush_tracing, tracing_callbacks
from lab.commands import experiment, trace

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Meme Creator: a Poe bot that turns topics into memes."
)
console = Console()
err_console = Console(stderr=True)

_FORMATS: dict[str, OutputFormat] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


@contextlib.contextmanager
def poe_platform(config: BotConfig) -> Iterator[tuple[str | None, str]]:
    """(root URL, API key): real Poe when POE_API_KEY is set, else a local Poe platform started in-process."""
    if config.api_key is not None and config.api_key.get_secret_value():
        yield config.poe_url, config.api_key.get_secret_value()
        return
    from localpoe import LocalPoeServer

    with LocalPoeServer() as server:
        err_console.print(
            f"[yellow]Offline:[/] POE_API_KEY is not set, so the meme is made by the local Poe platform's "
            f"offline stand-in bots at {server.url} (set POE_API_KEY to use real Poe)."
        )
        yield server.url, server.api_key


async def _make(chain: Any, request: dict[str, Any], image_bot: str) -> Meme:
    status = Text("✍️  Writing the meme…")
    meme: Meme | None = None
    with Live(status, console=err_console, transient=True, refresh_per_second=8) as live:
        # Read the stream to its end: leaving it early would end the chain's runs with GeneratorExit in traces.
        async for step in chain.astream(request):
            if isinstance(step, MemeProgress):
                quote = (step.draft.quote or "").replace("\n", " / ")
                doing = f"🎨 Drawing with {image_bot}…" if step.drawing else "✍️  Writing the meme…"
                live.update(Text(f"{doing} {step.elapsed_s:4.1f}s\n{quote}"))
            elif isinstance(step, Meme):
                meme = step
    if meme is None:
        raise RuntimeError("the meme chain ended without a meme")
    return meme


@app.command()
def make(
    topic: Annotated[str, typer.Argument(help="What the meme is about.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the meme (.png, .jpg or .webp).")] = Path(
        "meme.png"
    ),
    text_bot: Annotated[str | None, typer.Option(help="Poe text bot that writes the meme.")] = None,
    image_bot: Annotated[str | None, typer.Option(help="Poe image bot that draws the picture.")] = None,
    aspect: Annotated[str | None, typer.Option(help="Aspect ratio such as 16:9.")] = None,
    caption: Annotated[bool, typer.Option(help="Draw the quote onto the picture.")] = True,
    prompt: Annotated[str, typer.Option(help="Prompt variant (v1, v2).")] = "v1",
    language: Annotated[str | None, typer.Option(help="Language of the quote (default: the topic's).")] = None,
    trace_file: Annotated[
        Path | None, typer.Option("--trace", help="Write the run tree to this JSONL file.", show_default=False)
    ] = None,
) -> None:
    """Make one meme and write it to a file (offline on the local Poe platform when POE_API_KEY is unset)."""
    config = BotConfig()
    output_format = _FORMATS.get(out.suffix.lower())
    if output_format is None:
        err_console.print(f"[red]error:[/] --out must end in .png, .jpg or .webp, not {out.suffix or 'nothing'}")
        raise typer.Exit(2)
    text_bot = text_bot or config.text_bot
    image_bot = image_bot or config.image_bot
    request = {"topic": topic, "language": language or detect_language(topic)}
    try:
        with poe_platform(config) as (poe_url, api_key):
            chain: Runnable[Any, MemeStep] = build_meme_chain(
                text_bot=text_bot,
                image_bot=image_bot,
                fallback_image_bot=config.fallback_image_bot,
                caption=caption,
                caption_format=output_format,
                prompt_variant=prompt,
                text_timeout_s=config.text_timeout_s,
                image_timeout_s=config.image_timeout_s,
                poe_url=poe_url,
                api_key=api_key,
            )
            configurable = {"caption_language": request["language"]}
            if aspect:
                configurable["aspect_ratio"] = aspect
            chain = chain.with_config(
                configurable=configurable,
                callbacks=tracing_callbacks(trace_file, secrets=(api_key,)),
                metadata={"text_bot": text_bot, "image_bot": image_bot, "prompt_variant": prompt},
            )
            meme = asyncio.run(_make(chain, request, image_bot))
            flush_tracing()
            picture = meme.picture if meme.picture is not None else meme.image.read()
    except Exception as error:
        message, _ = explain(error)
        err_console.print(f"[red]error:[/] {message} ({type(error).__name__}: {error})")
        raise typer.Exit(1) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(picture)
    console.print(Text(meme.quote, style="bold"))
    console.print(f"[dim]picture:[/] {meme.image_prompt}")
    console.print(f"[green]wrote[/] {out} ({len(picture):,} bytes)")


app.command("experiment")(experiment)
app.command("trace")(trace)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
) -> None:
    """Serve the bot with uvicorn (needs POE_ACCESS_KEY), as `uvicorn server:app` does."""
    import uvicorn

    from bot.config import ConfigError

    try:
        BotConfig().checked_access_key()
    except ConfigError as error:
        err_console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    uvicorn.run("server:app", host=host, port=port, reload=reload, log_level="info")


@app.command()
def chat(
    url: Annotated[str, typer.Option(help="The running bot's URL.")] = "http://127.0.0.1:8080/",
    access_key: Annotated[
        str | None, typer.Option(help="The bot's access key (default: POE_ACCESS_KEY).", show_default=False)
    ] = None,
    save_dir: Annotated[Path, typer.Option(help="Where pictures are saved.")] = Path("memes"),
) -> None:
    """Talk to a running bot in the terminal, as Poe would: the conversation is kept and sent each turn."""
    from bot.terminal_chat import run_chat

    key = access_key or os.environ.get("POE_ACCESS_KEY", "")
    if not key:
        err_console.print("[red]error:[/] pass --access-key or set POE_ACCESS_KEY (the bot's key)")
        raise typer.Exit(2)
    asyncio.run(run_chat(url, key, save_dir, console))


@app.command("local-poe")
def local_poe(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8780,
    knob: Annotated[
        list[str] | None,
        typer.Option(help="Knob as [BOT.]name=value, e.g. first_token_delay_s=0.5 or FLUX-schnell.fault_rate=0.2."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for fault draws.")] = 0,
    realistic: Annotated[bool, typer.Option(help="Start with realistic delays instead of instant bots.")] = False,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Only accept these keys (default: any non-empty key).")
    ] = None,
) -> None:
    """Run the local Poe platform: bot queries, uploads, settings sync and cost, with offline bots."""
    from localpoe import serve as serve_local_poe
    from localpoe.knobs import knobs_from_cli

    knobs = knobs_from_cli(knob or [], seed=seed, realistic=realistic)
    serve_local_poe(host=host, port=port, knobs=knobs, api_keys=set(api_key) if api_key else None)


def main() -> None:
    """Console entry point."""
    install_log_redaction()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
