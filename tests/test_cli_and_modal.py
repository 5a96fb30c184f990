"""The main job as a newcomer runs it, `memebot make`, and the Modal deployment module."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def memebot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "MEMEBOT_"))}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )


def test_make_works_offline_and_writes_a_captioned_png(tmp_path: Path) -> None:
    out = tmp_path / "meme.png"
    result = memebot("make", "Monday mornings", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Offline" in result.stderr and "POE_API_KEY" in result.stderr
    image = Image.open(io.BytesIO(out.read_bytes()))
    assert image.format == "PNG" and min(image.size) >= 256
    assert len(image.convert("RGB").resize((32, 32)).getcolors(1024) or ()) > 20  # a picture, not a blank square
    assert "wrote" in result.stdout and str(out.name) in result.stdout


def test_make_in_chinese_to_jpeg_with_another_image_bot(tmp_path: Path) -> None:
    out = tmp_path / "猫.jpg"
    result = memebot("make", "猫和键盘", "--out", str(out), "--image-bot", "Playground-v3", "--aspect", "16:9")
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    assert image.format == "JPEG" and image.width > image.height
    assert any("\u4e00" <= ch <= "\u9fff" for ch in result.stdout)


def test_make_fails_clearly(tmp_path: Path) -> None:
    bad_suffix = memebot("make", "cats", "--out", str(tmp_path / "meme.gif"))
    assert bad_suffix.returncode == 2 and ".png" in bad_suffix.stderr
    unknown_bot = memebot("make", "cats", "--out", str(tmp_path / "m.png"), "--text-bot", "No-Such-Bot")
    assert unknown_bot.returncode == 1 and "No-Such-Bot" in unknown_bot.stderr
    assert "Traceback" not in unknown_bot.stderr


def test_modal_app_imports_offline_and_serves_the_bot(monkeypatch: pytest.MonkeyPatch) -> None:
    import modal

    import modal_app

    assert isinstance(modal_app.app, modal.App) and modal_app.app.name == "meme-creator"
    monkeypatch.setenv("POE_ACCESS_KEY", "a" * 32)
    assert isinstance(modal_app.fastapi_app.local(), FastAPI)


def test_chat_holds_a_conversation_with_a_running_bot(bot_url: str, access_key: str, tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "MEMEBOT_"))}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "chat", "--url", bot_url, "--save-dir", str(tmp_path)],
        cwd=REPO,
        env={**environment, "POE_ACCESS_KEY": access_key},
        input="Monday mornings\n1\n\n",  # a topic, then the first suggested reply ("Another one"), then quit
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    saved = sorted(tmp_path.iterdir())
    assert len(saved) == 2 and all(p.stat().st_size > 1000 for p in saved)
    assert result.stdout.count("picture saved:") == 2 and "Another one" in result.stdout
