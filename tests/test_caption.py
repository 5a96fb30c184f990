"""Caption renderer: geometry of the layout (inside margins, sizes, lines, coverage) and the encoded result."""

from __future__ import annotations

import asyncio
import io
import logging
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFont

from chains.caption import (
    CaptionImageError,
    CaptionRequest,
    CaptionStep,
    OutputFormat,
    draw_caption,
    draw_layout,
    render_meme,
)
from chains.caption_layout import (
    ELLIPSIS,
    MAX_LINES,
    NO_LINE_END,
    NO_LINE_START,
    CaptionLayout,
    layout_caption,
    split_quote,
)
from chains.fonts import DEBIAN_PACKAGES, FONT_DIR_ENV, NEEDS_NO_GLYPH, FontSet, default_font_dirs, discover_fonts

LATIN = "When you finally fix the bug\nand it was a missing semicolon"
CHINESE = "当你终于修好了一个bug，却发现又出现了三个新的bug。"
JAPANESE = "「締め切りは明日です」と言われた時の私の顔。"
MIXED = "当你的 code 终于 compile 了"
EMOJI = "This is fine 🔥🐶☕ everything is fine 👍🏽🇯🇵"
# Commas every third character: many wraps that ignored kinsoku would start a line with one.
CJK_COMMAS = "哈哈，" * 15 + "好。"
CJK_BRACKETS = "「他了我」的（有）你。你好你有。（你）「了」（我有）「了他有」有他你的你我在有。在在的，"
LONG_LATIN = ("lorem ipsum dolor sit amet consectetur " * 52)[:2000]
LONG_CHINESE = ("这是一个非常长的句子，" * 200)[:2000]
SIZES = [(1024, 1024), (1280, 720), (720, 1280), (256, 256)]


@pytest.fixture(scope="module")
def fonts() -> FontSet:
    """The system's caption fonts; every role is required, and a missing one names its Debian package."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv(FONT_DIR_ENV, raising=False)  # a developer's override must not change what is tested
        found = discover_fonts(default_font_dirs())
    missing = found.missing_roles()
    if missing:
        packages = " ".join(DEBIAN_PACKAGES[role] for role in missing)
        pytest.fail(f"caption fonts missing ({', '.join(missing)}): apt-get install -y {packages}")
    return found


def gray(width: int, height: int) -> Image.Image:
    """A flat mid-gray picture, so every pixel the caption touches shows."""
    return Image.new("RGB", (width, height), (128, 128, 128))


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def assert_sound(layout: CaptionLayout) -> None:
    """Geometry every caption must have, whatever the quote and picture."""
    assert layout.blocks, "nothing was laid out"
    for block in layout.blocks:
        assert block.region.top >= layout.safe_area.top and block.region.bottom <= layout.safe_area.bottom
        assert 1 <= len(block.lines) <= MAX_LINES
        assert block.font_size >= layout.min_font_size
        assert block.stroke_width == max(1, round(block.font_size / 15))
        for upper, lower in zip(block.lines, block.lines[1:], strict=False):
            assert upper.box.bottom <= lower.box.top, "lines overlap"
        for index, line in enumerate(block.lines):
            assert layout.safe_area.contains(line.box), f"{line.box} outside margins {layout.safe_area}"
            assert block.region.contains(line.box), f"{line.box} outside its block region {block.region}"
            if index > 0:
                assert line.text[0] not in NO_LINE_START, f"line starts with closing punctuation: {line.text!r}"
            if index < len(block.lines) - 1:
                assert line.text[-1] not in NO_LINE_END, f"line ends with opening punctuation: {line.text!r}"
            for run in line.runs:
                assert line.box.contains(run.box)
                uncovered = [ch for ch in run.text if ch != " " and ch not in NEEDS_NO_GLYPH]
                uncovered = [ch for ch in uncovered if ord(ch) not in run.face.coverage]
                assert not uncovered, f"{run.face.family} has no glyph for {uncovered}"
    if len(layout.blocks) == 2:
        assert layout.blocks[0].box.bottom <= layout.blocks[1].box.top


def block_text(layout: CaptionLayout) -> str:
    return " ".join(line.text for block in layout.blocks for line in block.lines)


# --- splitting the quote ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quote", "expected"),
    [
        ("Me: fixes one bug\nThe code: 99 new bugs", ("Me: fixes one bug", "The code: 99 new bugs")),
        ("One does not simply / walk into Mordor", ("One does not simply", "walk into Mordor")),
        ("Nobody:\n\n  \nAbsolutely nobody:\nMe", ("Nobody:", "Absolutely nobody: Me")),
        ("Expectation | reality", ("Expectation", "reality")),
        ("I fixed the failing test. By deleting the test.", ("I fixed the failing test.", "By deleting the test.")),
        ("Wait. That was the production database", ("", "Wait. That was the production database")),
        ("我以为我修好了。其实我只是删掉了测试。", ("我以为我修好了。", "其实我只是删掉了测试。")),
        ("a/b testing in production", ("", "a/b testing in production")),
        ("   ", ("", "")),
    ],
)
def test_quote_splits_into_setup_and_punchline(quote: str, expected: tuple[str, str]) -> None:
    assert split_quote(quote) == expected


# --- layout geometry ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize("quote", [LATIN, CHINESE, JAPANESE, MIXED, EMOJI, CJK_COMMAS], ids=lambda q: q[:6])
def test_every_caption_fits_its_margins(fonts: FontSet, quote: str, width: int, height: int) -> None:
    layout = layout_caption(quote, width, height, fonts=fonts)
    assert_sound(layout)
    assert layout.dropped == ""
    assert not any(block.truncated for block in layout.blocks)


def test_setup_goes_on_top_and_punchline_at_the_bottom_in_capitals(fonts: FontSet) -> None:
    layout = layout_caption(LATIN, 1024, 1024, fonts=fonts)
    top, bottom = layout.block("top"), layout.block("bottom")
    assert top is not None and bottom is not None
    assert " ".join(line.text for line in top.lines) == "WHEN YOU FINALLY FIX THE BUG"
    assert " ".join(line.text for line in bottom.lines) == "AND IT WAS A MISSING SEMICOLON"
    assert top.box.top == layout.safe_area.top
    assert bottom.box.bottom == layout.safe_area.bottom
    assert {run.face.role for block in layout.blocks for line in block.lines for run in line.runs} == {"display"}


def test_a_single_quote_goes_at_the_bottom(fonts: FontSet) -> None:
    layout = layout_caption("This is fine", 800, 600, fonts=fonts)
    assert [block.position for block in layout.blocks] == ["bottom"]


def test_shorter_quotes_get_larger_type(fonts: FontSet) -> None:
    sizes = [
        layout_caption(quote, 1024, 1024, fonts=fonts).blocks[0].font_size
        for quote in (
            "Nope",
            "Nope, not today, not tomorrow",
            "Nope, not today, not tomorrow, not ever, not in this life",
        )
    ]
    assert sizes[0] > sizes[1] > sizes[2]


def test_line_breaks_are_balanced_not_greedy(fonts: FontSet) -> None:
    # On a wide picture the height caps the size; filling lines greedily would leave a short last line.
    layout = layout_caption("it works on my machine every single time again", 1280, 720, fonts=fonts)
    lines = layout.blocks[0].lines
    assert [line.text for line in lines] == ["IT WORKS ON MY MACHINE", "EVERY SINGLE TIME AGAIN"]
    widths = [line.box.width for line in lines]
    assert max(widths) < 1.1 * min(widths)


@pytest.mark.parametrize("quote", [CJK_COMMAS, CJK_BRACKETS], ids=["commas", "brackets"])
def test_cjk_wraps_keep_punctuation_with_its_characters(fonts: FontSet, quote: str) -> None:
    # Many widths, so that the balanced breaks land on every kind of position.
    for side in range(240, 1100, 20):
        assert_sound(layout_caption(quote, side, side, fonts=fonts))


def test_chinese_uses_the_simplified_chinese_face(fonts: FontSet) -> None:
    layout = layout_caption(CHINESE, 1024, 1024, language="zh", fonts=fonts)
    cjk_runs = [run for line in layout.blocks[0].lines for run in line.runs if run.face.role == "cjk"]
    assert cjk_runs and {run.face.variant for run in cjk_runs} == {"SC"}
    assert "".join(block_text(layout).split()) == "当你终于修好了一个BUG，却发现又出现了三个新的BUG。"


def test_japanese_uses_the_japanese_face_guessed_from_kana(fonts: FontSet) -> None:
    layout = layout_caption(JAPANESE, 1024, 1024, fonts=fonts)
    assert {run.face.variant for line in layout.blocks[0].lines for run in line.runs} == {"JP"}


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_latin_words_stay_whole_inside_cjk_lines(fonts: FontSet, width: int, height: int) -> None:
    layout = layout_caption("当你的code终于compile了，老板说再加一个feature", width, height, fonts=fonts)
    assert_sound(layout)
    words = [word for line in layout.blocks[0].lines for word in _latin_words(line.text)]
    assert words == ["CODE", "COMPILE", "FEATURE"]


def test_spaces_in_cjk_text_are_the_preferred_breaks(fonts: FontSet) -> None:
    layout = layout_caption(MIXED, 1024, 1024, fonts=fonts)
    assert [line.text for line in layout.blocks[0].lines] == ["当你的 CODE", "终于 COMPILE 了"]


def _latin_words(text: str) -> list[str]:
    return "".join(ch if ch.isascii() and ch.isalpha() else " " for ch in text).split()


def test_cyrillic_and_greek_take_a_font_that_covers_each_whole_word(fonts: FontSet) -> None:
    layout = layout_caption("Когда код работает с первого раза: ΩΡΑΙΑ ΔΟΥΛΕΙΑ", 1024, 1024, fonts=fonts)
    assert_sound(layout)
    assert layout.dropped == ""
    for line in layout.blocks[0].lines:
        for word in line.text.split():
            assert any(word in run.text for run in line.runs), f"{word} is split across fonts"


def test_turkish_dotted_i_is_kept_in_capitals(fonts: FontSet) -> None:
    layout = layout_caption("istanbul", 800, 800, language="tr", fonts=fonts)
    assert block_text(layout) == "İSTANBUL"


def test_emoji_are_drawn_from_the_colour_font(fonts: FontSet) -> None:
    layout = layout_caption(EMOJI, 1024, 1024, fonts=fonts)
    emoji_runs = [run for line in layout.blocks[0].lines for run in line.runs if run.is_emoji]
    assert [run.text for run in emoji_runs] == ["🔥", "🐶", "☕", "👍🏽", "🇯🇵"]
    image = draw_caption(gray(1024, 1024), EMOJI, fonts=fonts)
    for run in emoji_runs:
        saturation = image.crop((run.box.left, run.box.top, run.box.right, run.box.bottom)).convert("HSV")
        coloured = saturation.getchannel("S").point(lambda s: 255 if s > 60 else 0).histogram()[255]
        assert coloured > run.box.width * run.box.height // 20, f"{run.text} drawn without colour"


def test_emoji_are_dropped_cleanly_without_a_colour_font(fonts: FontSet) -> None:
    layout = layout_caption(EMOJI, 1024, 1024, fonts=replace(fonts, emoji=None))
    assert_sound(layout)
    assert block_text(layout) == "THIS IS FINE ☕ EVERYTHING IS FINE"  # ☕ has a text glyph in DejaVu Sans
    assert layout.dropped == "🔥🐶👍🏽🇯🇵"


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize(
    "quote", [LONG_LATIN, LONG_CHINESE, "x" * 2000, "🔥" * 2000], ids=["latin", "zh", "x", "emoji"]
)
def test_long_quotes_shrink_then_end_in_an_ellipsis(fonts: FontSet, quote: str, width: int, height: int) -> None:
    layout = layout_caption(quote, width, height, fonts=fonts)
    assert_sound(layout)
    block = layout.blocks[-1]
    assert block.truncated
    assert block.font_size == layout.min_font_size
    assert block.lines[-1].text.endswith(ELLIPSIS)


def test_a_huge_quote_is_cut_early(fonts: FontSet) -> None:
    layout = layout_caption("word " * 400_000, 1024, 1024, fonts=fonts)
    assert_sound(layout)
    assert block_text(layout).endswith(ELLIPSIS)


@pytest.mark.parametrize(("width", "height"), [(40, 30), (1, 1), (3000, 20), (20, 3000)])
def test_tiny_and_extreme_pictures_never_crash(fonts: FontSet, width: int, height: int) -> None:
    layout = layout_caption(LATIN, width, height, fonts=fonts)
    for block in layout.blocks:
        for line in block.lines:
            assert layout.safe_area.contains(line.box)
    draw_caption(gray(width, height), LATIN, fonts=fonts)


SCOTLAND = "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"  # a flag spelt with tag characters
# Scripts, emoji sequences, marks and characters no font has, mixed at random.
FUZZ_ALPHABET = [
    *"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ     ,.!?;:'\"()[]-—…/|\n\t",
    *"当你终于修好了一个却发现又出现三新的，。！？、「」『』（）：；締め切りは明日ですと言われた時の私顔ーっャ",
    *"ÉéÖößŁłĐđƯưỀềЖжΩωαβ",
    *["🔥", "👍🏽", "🇯🇵", "👨\u200d👩\u200d👧", "❤️", "1️⃣", "☕", "★", "\u200d", "\ufe0f", "\u0301", "\x00"],
    *[
        "\u202e",
        "한국어",
        "مرحبا",
        "שלום",
        "\U0010fffd",
        "\ue000",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    ],
]


def test_random_quotes_stay_inside_their_boxes(fonts: FontSet) -> None:
    rng = random.Random(20240521)
    for _case in range(40):
        quote = "".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.choice([1, 8, 40, 200])))
        width, height = rng.choice(SIZES)
        layout = layout_caption(quote, width, height, language=rng.choice([None, "ja", "zh-TW", "tr"]), fonts=fonts)
        if layout.blocks:
            assert_sound(layout)
        original = gray(width, height)
        assert _ink_outside_boxes(original, draw_layout(original.copy(), layout), layout) is None, repr(quote)


def _ink_outside_boxes(original: Image.Image, drawn: Image.Image, layout: CaptionLayout) -> tuple[int, ...] | None:
    """Bounding box of pixels that changed outside every line box, None if there are none."""
    mask = Image.new("L", original.size, 0)
    for block in layout.blocks:
        for line in block.lines:
            mask.paste(255, (line.box.left, line.box.top, line.box.right, line.box.bottom))
    return ImageChops.difference(Image.composite(original, drawn, mask), original).getbbox()


def test_empty_quote_draws_nothing(fonts: FontSet) -> None:
    layout = layout_caption(" \n\t ", 640, 480, fonts=fonts)
    assert layout.blocks == ()
    image = gray(640, 480)
    assert ImageChops.difference(draw_caption(image.copy(), " \n ", fonts=fonts), image).getbbox() is None


# --- fonts ------------------------------------------------------------------------------------------------------------


def test_cmap_coverage_agrees_with_what_freetype_draws(fonts: FontSet) -> None:
    """Independent check of the cmap reader: an unmapped character renders as the .notdef glyph."""
    for face, present, absent in [
        (fonts.display, "AÉŁЖ€…", "Ω国ẞ"),
        (fonts.sans, "AΩЖ☕", "国あ"),
        (fonts.cjk_face("zh"), "国あ，。「A", "\U0001f525"),
    ]:
        assert face is not None and face.path is not None
        font = ImageFont.truetype(face.path, 48, index=face.index)
        notdef = bytes(font.getmask("\U0010fffd"))
        for ch in present:
            assert ord(ch) in face.coverage and bytes(font.getmask(ch)) != notdef, (face.family, ch)
        for ch in absent:
            assert ord(ch) not in face.coverage and bytes(font.getmask(ch)) == notdef, (face.family, ch)


def test_font_dir_override_is_the_only_place_searched(
    fonts: FontSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fonts.sans is not None and fonts.sans.path is not None
    (tmp_path / Path(fonts.sans.path).name).symlink_to(fonts.sans.path)
    monkeypatch.setenv(FONT_DIR_ENV, str(tmp_path))
    only_sans = discover_fonts()
    assert (only_sans.display, only_sans.cjk, only_sans.emoji) == (None, (), None)
    layout = layout_caption("Ça marche", 640, 480, fonts=only_sans)
    assert_sound(layout)
    assert {run.face for line in layout.blocks[0].lines for run in line.runs} == {only_sans.sans}


def test_without_any_font_pillows_builtin_draws_latin_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(FONT_DIR_ENV, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="chains.fonts"):
        bare = discover_fonts()
    assert bare.builtin is not None and bare.faces == (bare.builtin,)
    assert "no caption fonts found" in caplog.text
    layout = layout_caption("Still works 国", 640, 480, fonts=bare)
    assert_sound(layout)
    assert block_text(layout) == "STILL WORKS" and layout.dropped == "国"
    rendered = render_meme(encoded(gray(640, 480)), "Still works", fonts=bare)
    assert Image.open(io.BytesIO(rendered.data)).size == (640, 480)


# --- drawing and encoding ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quote", [LATIN, MIXED, EMOJI], ids=["latin", "mixed", "emoji"])
def test_drawing_changes_pixels_only_inside_the_text_boxes(fonts: FontSet, quote: str) -> None:
    original = gray(900, 700)
    layout = layout_caption(quote, 900, 700, fonts=fonts)
    drawn = draw_caption(original.copy(), quote, fonts=fonts)
    for block in layout.blocks:
        for line in block.lines:
            inside = drawn.crop((line.box.left, line.box.top, line.box.right, line.box.bottom))
            colours = {colour for _count, colour in inside.getcolors(1 << 20) or []}
            assert (255, 255, 255) in colours and (0, 0, 0) in colours, "white fill or black outline missing"
    assert _ink_outside_boxes(original, drawn, layout) is None, "ink outside the text boxes"


@pytest.mark.parametrize(
    ("fmt", "content_type", "suffix"),
    [("jpeg", "image/jpeg", ".jpg"), ("webp", "image/webp", ".webp"), ("png", "image/png", ".png")],
)
def test_render_meme_encodes_a_decodable_picture(
    fonts: FontSet, fmt: OutputFormat, content_type: str, suffix: str
) -> None:
    source = encoded(gray(1024, 576), "JPEG")
    rendered = render_meme(source, LATIN, output_format=fmt, fonts=fonts)
    assert (rendered.content_type, rendered.suffix) == (content_type, suffix)
    with Image.open(io.BytesIO(rendered.data)) as image:
        assert image.format == fmt.upper()
        assert image.size == (rendered.width, rendered.height) == (1024, 576)
        image.load()


@pytest.mark.parametrize(("size", "expected"), [((2560, 1440), (1280, 720)), ((1000, 3000), (427, 1280))])
def test_render_meme_fits_large_pictures_for_chat(
    fonts: FontSet, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    rendered = render_meme(encoded(gray(*size), "JPEG"), "big", fonts=fonts)
    assert (rendered.width, rendered.height) == expected
    assert Image.open(io.BytesIO(rendered.data)).size == expected


def test_render_meme_keeps_transparency_where_the_format_can(fonts: FontSet) -> None:
    source = encoded(Image.new("RGBA", (300, 300), (0, 128, 0, 0)))
    assert Image.open(io.BytesIO(render_meme(source, "hi", output_format="png", fonts=fonts).data)).mode == "RGBA"
    assert Image.open(io.BytesIO(render_meme(source, "hi", output_format="jpeg", fonts=fonts).data)).mode == "RGB"


def test_render_meme_rejects_bytes_that_are_not_a_picture(fonts: FontSet) -> None:
    with pytest.raises(CaptionImageError, match="could not be decoded"):
        render_meme(b"<html>rate limited</html>", "quote", fonts=fonts)


# --- the Runnable -----------------------------------------------------------------------------------------------------


@pytest.fixture
def picture() -> Iterator[bytes]:
    yield encoded(gray(640, 640), "JPEG")


def test_caption_step_invokes_synchronously(fonts: FontSet, picture: bytes) -> None:
    step = CaptionStep()
    rendered = step.invoke(CaptionRequest(image=picture, quote=LATIN, output_format="webp"))
    assert step.get_name() == "CaptionStep"
    assert rendered.content_type == "image/webp"
    assert Image.open(io.BytesIO(rendered.data)).size == (640, 640)


async def test_caption_step_renders_off_the_event_loop(fonts: FontSet) -> None:
    big = encoded(Image.effect_noise((2048, 2048), 60).convert("RGB"), "JPEG")
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    request = CaptionRequest(image=big, quote=MIXED, language="zh")
    rendered = await CaptionStep(max_side=2048).ainvoke(request)
    done.set()
    await task
    assert (rendered.width, rendered.height) == (2048, 2048)
    # Decoding, drawing and encoding a noisy 2048px picture takes tens of ms; a blocked loop ticks about twice.
    assert ticks >= 10
