"""Deploying the bot on Modal: `modal deploy modal_app.py`. Thin on purpose: the bot lives in server.py."""

from __future__ import annotations

from pathlib import Path

import modal
from fastapi import FastAPI

APP_NAME = "meme-creator"
SECRET_NAME = "meme-creator-poe"
_ROOT = Path(__file__).parent

# Fonts for captions come from Debian, as in .ci/run; Python packages from the same lock file CI installs.
image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install(*(_ROOT / "system-packages.txt").read_text().split())
    .pip_install_from_requirements(str(_ROOT / "requirements.lock"))
    .add_local_python_source("bot", "chains", "server")
    .add_local_dir(_ROOT / "prompts", remote_path="/root/prompts")
)

app = modal.App(APP_NAME, image=image)


@app.function(
    # POE_ACCESS_KEY (required) and optionally MEMEBOT_* settings; never baked into the image.
    secrets=[modal.Secret.from_name(SECRET_NAME, required_keys=["POE_ACCESS_KEY"])],
    # I/O-bound: one container waits on many Poe streams at once. Keep one warm so the first event is fast.
    min_containers=1,
    max_containers=10,
    scaledown_window=600,
    timeout=150,
    cpu=1.0,
    memory=1024,
)
@modal.concurrent(max_inputs=60, target_inputs=40)
@modal.asgi_app()
def fastapi_app() -> FastAPI:
    """The bot's ASGI app, configured from the Modal secret's environment."""
    from server import create_app

    return create_app()
