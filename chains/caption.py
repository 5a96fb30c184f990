"""Drawing a meme quote onto its picture: classic white outlined captions, encoded for chat."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig, RunnableSerializable
from PIL import Image, ImageDraw, ImageOps
from pydantic import BaseModel, ConfigDict

from chains.caption_layout import CaptionLayout, CaptionRun, emoji_bitmap, layout_caption
from chains.fonts import FontSet

__all__ = [
    "CaptionImageError",
    "CaptionRequest",
    "CaptionStep",
    "OutputFormat",
    "RenderedMeme",
    "draw_caption",
    "draw_layout",
    "render_meme",
]

OutputFormat = Literal["webp", "jpeg", "png"]

TEXT_FILL = (255, 255, 255)
OUTLINE_FILL = (0, 0, 0)
CONTENT_TYPES: dict[OutputFormat, tuple[str, str]] = {
    "jpeg": ("image/jpeg", ".jpg"),
    "webp": ("image/webp", ".webp"),
    "png": ("image/png", ".png"),
}
# Chat pictures: no visible artefacts around the outlined text; effort settings picked for encode speed.
ENCODE_OPTIONS: dict[OutputFormat, dict[str, Any]] = {
    "jpeg": {"quality": 88},
    "webp": {"quality": 85, "method": 2},
    "png": {"optimize": False, "compress_level": 1},
}


class CaptionImageError(ValueError):
    """The picture could not be read as an image"""


@dataclass(frozen=True)
class RenderedMeme:
    """An encoded captioned picture, ready to upload."""

    data: bytes = field(repr=False)
    content_type: str
    width: int
    height: int
    suffix: str  # file name suffix with its dot, e.g. ".jpg"


def draw_caption(
    image: Image.Image, quote: str, *, language: str | None = None, fonts: FontSet | None = None
) -> Image.Image:
    """Draw quote as meme captions; draws in place on RGB/RGBA images (others are converted first)."""
    layout = layout_caption(quote, image.width, image.height, language=language, fonts=fonts)
    return draw_layout(image, layout)


def draw_layout(image: Image.Image, layout: CaptionLayout) -> Image.Image:
    """Draw a computed layout; returns the image drawn on (the same one when it is RGB or RGBA)."""
    if (image.width, image.height) != (layout.width, layout.height):
        raise ValueError(f"layout is for {layout.width}x{layout.height}, image is {image.width}x{image.height}")
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    draw = ImageDraw.Draw(image)
    for block in layout.blocks:
        for line in block.lines:
            for run in line.runs:
                if run.is_emoji:
                    _paste_emoji(image, run)
                else:
                    draw.text(
                        (run.x, run.baseline),
                        run.text,
                        font=run.face.load(block.font_size),
                        fill=TEXT_FILL,
                        anchor="ls",
                        stroke_width=block.stroke_width,
                        stroke_fill=OUTLINE_FILL,
                    )
    return image


def _paste_emoji(image: Image.Image, run: CaptionRun) -> None:
    """Colour emoji fonts only render at their bitmap size: scale the glyph to the run's box."""
    glyph = emoji_bitmap(run.face, run.text).resize((run.box.width, run.box.height), Image.Resampling.LANCZOS)
    if image.mode == "RGBA":
        image.alpha_composite(glyph, (run.box.left, run.box.top))
    else:
        image.paste(glyph, (run.box.left, run.box.top), glyph)


def render_meme(
    image_bytes: bytes,
    quote: str,
    *,
    language: str | None = None,
    output_format: OutputFormat = "jpeg",
    max_side: int = 1280,
    fonts: FontSet | None = None,
) -> RenderedMeme:
    """Decode a picture, fit it within max_side, draw the quote on it and encode it for chat."""
    if output_format not in CONTENT_TYPES:
        raise ValueError(f"unsupported output format {output_format!r}; use one of {sorted(CONTENT_TYPES)}")
    image = _decode(image_bytes, max_side, keep_alpha=output_format != "jpeg")
    # Captions are drawn after resizing: crisper text, and fewer pixels to draw on.
    image = draw_caption(image, quote, language=language, fonts=fonts)
    buffer = io.BytesIO()
    image.save(buffer, format=output_format.upper(), **ENCODE_OPTIONS[output_format])
    content_type, suffix = CONTENT_TYPES[output_format]
    return RenderedMeme(buffer.getvalue(), content_type, image.width, image.height, suffix)


def _decode(image_bytes: bytes, max_side: int, *, keep_alpha: bool) -> Image.Image:
    """The picture upright, as RGB (or RGBA when it has transparency and may keep it), long side <= max_side."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    try:
        source = Image.open(io.BytesIO(image_bytes))
        source.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, much faster
        ImageOps.exif_transpose(source, in_place=True)
        mode = "RGBA" if keep_alpha and source.has_transparency_data else "RGB"
        image = source.convert(mode) if source.mode != mode else source
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CaptionImageError(f"the picture could not be decoded: {exc}") from None
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


class CaptionRequest(BaseModel):
    """Input of `CaptionStep`: the picture's encoded bytes, the quote, its language, and the wanted format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: bytes
    quote: str
    language: str | None = None
    output_format: OutputFormat = "jpeg"


class CaptionStep(RunnableSerializable[CaptionRequest, RenderedMeme]):
    """Runnable drawing the quote onto the picture; `ainvoke` works in a thread, off the event loop."""

    name: str | None = "CaptionStep"
    max_side: int = 1280

    def invoke(self, input: CaptionRequest, config: RunnableConfig | None = None, **kwargs: Any) -> RenderedMeme:
        """Caption the picture synchronously."""
        return self._call_with_config(self._render, input, config)

    async def ainvoke(self, input: CaptionRequest, config: RunnableConfig | None = None, **kwargs: Any) -> RenderedMeme:
        """Caption the picture in a worker thread."""
        return await self._acall_with_config(self._arender, input, config)

    async def _arender(self, request: CaptionRequest) -> RenderedMeme:
        return await asyncio.to_thread(self._render, request)

    def _render(self, request: CaptionRequest | dict[str, Any]) -> RenderedMeme:
        # Chains often hand steps plain dicts; accept them with the same validation.
        request = CaptionRequest.model_validate(request)
        return render_meme(
            request.image,
            request.quote,
            language=request.language,
            output_format=request.output_format,
            max_side=self.max_side,
        )
