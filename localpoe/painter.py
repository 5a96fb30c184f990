"""The offline painter: a deterministic PNG drawn from a hash of the prompt (sky, sun, hills, shapes)."""

from __future__ import annotations

import hashlib
import io
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageDraw

LONG_SIDE = 1024
_ASPECT_FLAG_RE = re.compile(r"\s*--(?:aspect|ar)\s+(\d+(?:\.\d+)?)\s*[:x]\s*(\d+(?:\.\d+)?)\s*$", re.IGNORECASE)
_ASPECT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x]\s*(\d+(?:\.\d+)?)\s*$")
_MAX_RATIO = 4.0

Color = tuple[int, int, int]

# Words that steer the palette, so "night" looks like night; the hash decides everything else.
_PALETTES: tuple[tuple[tuple[str, ...], Color, Color], ...] = (
    (("night", "dark", "moon", "space", "shadow", "moody", "夜"), (12, 16, 48), (58, 42, 110)),
    (("sunset", "sunrise", "dawn", "evening", "warm", "日落"), (250, 120, 70), (255, 214, 140)),
    (("sea", "ocean", "beach", "water", "rain", "海"), (20, 90, 160), (150, 215, 240)),
    (("forest", "garden", "plant", "grass", "green", "森林"), (40, 110, 70), (190, 230, 170)),
    (("snow", "winter", "ice", "cold", "雪"), (170, 195, 225), (245, 250, 255)),
)


def parse_aspect(value: str | None) -> tuple[float, float] | None:
    """'16:9' -> (16.0, 9.0); None when absent or malformed."""
    if not value:
        return None
    match = _ASPECT_RE.match(value)
    if not match:
        return None
    width, height = float(match.group(1)), float(match.group(2))
    return (width, height) if width > 0 and height > 0 else None


def split_prompt(text: str, parameters: Mapping[str, Any] | None = None) -> tuple[str, tuple[float, float] | None]:
    """The prompt without a trailing ` --aspect W:H` flag, and the aspect (flag first, then parameters)."""
    match = _ASPECT_FLAG_RE.search(text)
    aspect: tuple[float, float] | None = None
    if match:
        text = text[: match.start()]
        aspect = (float(match.group(1)), float(match.group(2)))
        if aspect[0] <= 0 or aspect[1] <= 0:
            aspect = None
    if aspect is None and parameters:
        raw = parameters.get("aspect_ratio")
        aspect = parse_aspect(raw) if isinstance(raw, str) else None
    return text.strip(), aspect


def size_for(aspect: tuple[float, float] | None, long_side: int = LONG_SIDE) -> tuple[int, int]:
    """Pixel size for an aspect: the long side is `long_side`, the short side rounded to a multiple of 8."""
    if aspect is None:
        return long_side, long_side
    ratio = min(max(aspect[0] / aspect[1], 1 / _MAX_RATIO), _MAX_RATIO)
    if ratio >= 1:
        return long_side, _round8(long_side / ratio)
    return _round8(long_side * ratio), long_side


def _round8(value: float) -> int:
    return max(8, round(value / 8) * 8)


def _palette(prompt: str, rng: random.Random) -> tuple[Color, Color]:
    lowered = prompt.lower()
    for words, top, bottom in _PALETTES:
        if any(word in lowered for word in words):
            return top, bottom
    top = (rng.randrange(30, 140), rng.randrange(60, 170), rng.randrange(120, 256))
    bottom = (rng.randrange(150, 256), rng.randrange(130, 240), rng.randrange(90, 220))
    return top, bottom


def _mix(a: Color, b: Color, t: float) -> Color:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def draw_png(prompt: str, size: tuple[int, int]) -> bytes:
    """Draw the picture for `prompt` at `size` and return PNG bytes (same prompt and size, same bytes)."""
    width, height = size
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    top, bottom = _palette(prompt, rng)

    # Sky: a vertical gradient, drawn as a 1-pixel-wide strip and stretched (fast at any size).
    strip = Image.new("RGB", (1, height))
    strip.putdata([_mix(top, bottom, y / max(1, height - 1)) for y in range(height)])
    image = strip.resize((width, height))
    draw = ImageDraw.Draw(image, "RGBA")

    # Sun or moon.
    radius = round(min(width, height) * rng.uniform(0.07, 0.14))
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.12, 0.4) * height
    sun = (255, rng.randrange(200, 256), rng.randrange(90, 200))
    draw.ellipse((cx - radius * 1.6, cy - radius * 1.6, cx + radius * 1.6, cy + radius * 1.6), fill=(*sun, 60))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(*sun, 255))

    # Rolling hills towards a horizon, each layer darker than the one behind it.
    horizon = rng.uniform(0.55, 0.72) * height
    ground = (rng.randrange(30, 120), rng.randrange(70, 160), rng.randrange(30, 110))
    for layer in range(3):
        base = horizon + layer * height * 0.09
        amplitude, phase = height * rng.uniform(0.03, 0.08), rng.uniform(0, 6.28)
        steps = 24
        points = [(0.0, float(height))]
        for i in range(steps + 1):
            x = width * i / steps
            wave = rng.uniform(-0.3, 0.3) + (1 if (i + phase) % 6 < 3 else -1) * 0.5
            points.append((x, base - amplitude * wave))
        points.append((float(width), float(height)))
        draw.polygon(points, fill=(*_mix(ground, (0, 0, 0), layer * 0.25), 255))

    # A few shapes standing in for the subject: round blobs and boxes with soft colours.
    for _ in range(rng.randrange(3, 7)):
        w, h = rng.uniform(0.05, 0.18) * width, rng.uniform(0.05, 0.18) * height
        x, y = rng.uniform(0.05, 0.95) * width - w / 2, rng.uniform(0.45, 0.9) * height - h / 2
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256), rng.randrange(170, 240))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=colour, outline=(0, 0, 0, 120), width=3)
        else:
            draw.rounded_rectangle((x, y, x + w, y + h), radius=min(w, h) / 5, fill=colour)

    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)  # speed over size: it only travels over loopback
    return out.getvalue()


class PngCache:
    """Small LRU of drawn pictures keyed by (prompt, size), so a repeated prompt costs nothing."""

    def __init__(self, max_items: int = 32) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, tuple[int, int]], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_draw(self, prompt: str, size: tuple[int, int]) -> bytes:
        """Cached bytes for (prompt, size), drawing them on a miss (call off the event loop)."""
        key = (prompt, size)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
                return cached
        data = draw_png(prompt, size)
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return data
