"""Declared cost of one call to a Poe bot, in Poe points: approximate, and only where known."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

DECLARED_POINTS: Final[Mapping[str, float]] = {
    # Approximate points per message as shown on the bots' Poe pages (2025). Poe changes them and some bots
    # price by length; check the bot's page before relying on a figure, and override with --points BOT=N.
    "GPT-4o-Mini": 15,
    "GPT-4o": 280,
    "Claude-3-Haiku": 30,
    "Claude-3.5-Sonnet": 380,
    "Claude-Sonnet-4": 380,
    "Gemini-2.0-Flash": 20,
    "Mistral-Large-2": 160,
    "FLUX-schnell": 40,
    "FLUX-dev": 625,
    "FLUX-pro-1.1": 1500,
    "Imagen-3": 1000,
    "Playground-v3": 300,
    "DALL-E-3": 1500,
    "Ideogram-v2": 1500,
}


def declared_points(bot: str, overrides: Mapping[str, float] | None = None) -> float | None:
    """Approximate points one call to `bot` costs, or None when unknown (names match case-insensitively)."""
    for table in (overrides or {}, DECLARED_POINTS):
        for name, points in table.items():
            if name.lower() == bot.lower():
                return points
    return None


def meme_points(bots: Iterable[str], overrides: Mapping[str, float] | None = None) -> float | None:
    """Points for one meme made with these bots (one call each), or None if any of them is unknown."""
    total = 0.0
    for bot in bots:
        points = declared_points(bot, overrides)
        if points is None:
            return None
        total += points
    return total


def parse_points(assignments: Iterable[str]) -> dict[str, float]:
    """`BOT=N` strings (from --points) as a table; raises ValueError on a malformed one."""
    table: dict[str, float] = {}
    for assignment in assignments:
        bot, sep, value = assignment.partition("=")
        try:
            points = float(value)
        except ValueError:
            points = -1.0
        if not sep or not bot.strip() or points < 0:
            raise ValueError(f"--points takes BOT=N with N a number of points, not {assignment!r}")
        table[bot.strip()] = points
    return table
