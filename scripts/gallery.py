"""Write sample captioned memes as PNGs into a directory, to look at the caption renderer's output.

Usage: python scripts/gallery.py OUT_DIR
Runs offline: the pictures are generated gradients.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageChops

from chains.caption import render_meme
from chains.caption_layout import layout_caption


class Sample(NamedTuple):
    name: str
    quote: str
    size: tuple[int, int]
    language: str | None = None


SAMPLES = (
    Sample("latin-setup-punchline", "When you finally fix the bug\nand it was a missing semicolon", (1024, 1024)),
    Sample("latin-two-sentences", "I fixed the failing test. By deleting the test.", (1024, 1024)),
    Sample("chinese", "当你终于修好了一个bug，却发现又出现了三个新的bug。", (1024, 1024), "zh"),
    Sample("japanese", "「締め切りは明日です」と言われた時の私の顔。", (1024, 1024), "ja"),
    Sample("mixed-emoji", "当你的 code 终于 compile 了 😭🎉", (1024, 1024)),
    Sample("latin-emoji", "This is fine 🔥🐶☕ everything is fine", (1024, 1024)),
    Sample("very-long", "Nobody: absolutely nobody: my code at 3 am: " * 40, (1024, 1024)),
    Sample("wide-16x9", "Expectation / reality", (1280, 720)),
    Sample("tall-9x16", "Me explaining to my mom why I need another mechanical keyboard", (720, 1280)),
    Sample("small", "Nope", (256, 256)),
)


def background(width: int, height: int) -> bytes:
    """A colourful diagonal gradient, PNG-encoded like a picture from an image bot."""
    ramp = Image.linear_gradient("L")
    red = ramp.resize((width, height))
    green = ramp.rotate(90).resize((width, height))
    blue = ImageChops.invert(red).point(lambda v: 60 + v // 2)
    buffer = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    """Render every sample into OUT_DIR and print a line per sample."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the PNGs into (created if missing)")
    args = parser.parse_args()
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for sample in SAMPLES:
        picture = background(*sample.size)
        start = time.perf_counter()
        rendered = render_meme(picture, sample.quote, language=sample.language, output_format="png")
        elapsed_ms = (time.perf_counter() - start) * 1000
        path = out_dir / f"{sample.name}.png"
        path.write_bytes(rendered.data)
        layout = layout_caption(sample.quote, rendered.width, rendered.height, language=sample.language)
        sizes = ", ".join(f"{block.position} {block.font_size}px x{len(block.lines)}" for block in layout.blocks)
        print(f"{path}  {rendered.width}x{rendered.height}  {sizes}  {elapsed_ms:.0f} ms")


if __name__ == "__main__":
    main()
