"""Caption geometry: where each line of a meme quote goes, in which font and at what size (no drawing)."""

from __future__ import annotations

import bisect
import itertools
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from PIL import Image, ImageDraw

from chains.fonts import NEEDS_NO_GLYPH, FontFace, FontSet, discover_fonts

__all__ = [
    "ELLIPSIS",
    "MAX_LINES",
    "NO_LINE_END",
    "NO_LINE_START",
    "Box",
    "CaptionBlock",
    "CaptionLayout",
    "CaptionLine",
    "CaptionRun",
    "emoji_bitmap",
    "layout_caption",
    "min_font_size",
    "split_quote",
    "stroke_width_for",
]

BlockPosition = Literal["top", "bottom"]

MAX_LINES = 3
SIDE_MARGIN = 0.04  # of the width, each side
EDGE_MARGIN = 0.03  # of the height, above the top block and below the bottom one
MAX_BLOCK_HEIGHT = 0.28  # of the height, per block
MAX_FONT_SIZE = 0.16  # of the shorter side: one short word should not fill the picture
MIN_FONT_SIZE = 0.04  # of the shorter side, but never under MIN_FONT_PX
MIN_FONT_PX = 12
SPACE_BREAK_SHRINK = 0.85  # a CJK quote with spaces breaks only at them if that keeps this much of the size
LINE_GAP = 0.06  # of the font size, between the outlines of two lines
EMOJI_HEIGHT = 0.85  # of the font size
EMOJI_DROP = 0.08  # of the font size: how far an emoji sits below the baseline
ELLIPSIS = "…"
MAX_QUOTE_CHARS = 10_000  # longer quotes are cut before any work; they end in an ellipsis anyway
# Glyph whose outlined ink gives a face's usual line extent, so line spacing does not jump with the text.
REFERENCE_TEXT = {"cjk": "国"}
REFERENCE_TEXT_DEFAULT = "H"

# Kinsoku: a line never starts with closing punctuation nor ends with opening punctuation.
NO_LINE_START = frozenset(
    "，。！？、」』）：；…‥,.!?:;)]}》〉】〕〗〙〛’”»›ー〜～・ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶ々〻ゝゞヽヾ%％‰℃"
)
NO_LINE_END = frozenset("「『（([{《〈【〔〖〘〚‘“«‹")

SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=\S)|(?<=[。！？])(?=[^\s。！？」』）”’])")
SETUP_SEPARATOR = re.compile(r"\s+[/|]\s+")
MIN_SENTENCE_WEIGHT = 10  # a sentence this short (wide characters count double) stays with the other one


@dataclass(frozen=True)
class Box:
    """An axis-aligned pixel box; right and bottom are exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        """Width in pixels."""
        return self.right - self.left

    @property
    def height(self) -> int:
        """Height in pixels."""
        return self.bottom - self.top

    def contains(self, other: Box) -> bool:
        """Whether other lies entirely inside this box."""
        return (
            self.left <= other.left
            and self.top <= other.top
            and other.right <= self.right
            and other.bottom <= self.bottom
        )

    def shift(self, dx: int, dy: int) -> Box:
        """This box moved by (dx, dy)."""
        return Box(self.left + dx, self.top + dy, self.right + dx, self.bottom + dy)

    def union(self, other: Box) -> Box:
        """The smallest box holding both."""
        return Box(
            min(self.left, other.left),
            min(self.top, other.top),
            max(self.right, other.right),
            max(self.bottom, other.bottom),
        )


@dataclass(frozen=True)
class CaptionRun:
    """Text drawn in one face from one pen position (an emoji run is one colour glyph)."""

    text: str
    face: FontFace
    x: int
    baseline: int
    box: Box  # ink, including the outline

    @property
    def is_emoji(self) -> bool:
        """Whether this run is a colour emoji pasted as a bitmap."""
        return self.face.role == "emoji"


@dataclass(frozen=True)
class CaptionLine:
    """One centred line of a block."""

    text: str
    runs: tuple[CaptionRun, ...]
    box: Box


@dataclass(frozen=True)
class CaptionBlock:
    """The top or bottom caption: its lines at one font size, inside its region."""

    position: BlockPosition
    lines: tuple[CaptionLine, ...]
    font_size: int
    stroke_width: int
    region: Box
    truncated: bool

    @property
    def box(self) -> Box:
        """Ink box of all lines."""
        boxes = [line.box for line in self.lines]
        result = boxes[0]
        for box in boxes[1:]:
            result = result.union(box)
        return result


@dataclass(frozen=True)
class CaptionLayout:
    """Where a quote goes on a picture of a given size."""

    width: int
    height: int
    blocks: tuple[CaptionBlock, ...]
    safe_area: Box  # the image less its margins
    min_font_size: int
    dropped: str  # characters no available font can draw

    def block(self, position: BlockPosition) -> CaptionBlock | None:
        """The top or bottom block, if the quote has one."""
        return next((block for block in self.blocks if block.position == position), None)


def min_font_size(width: int, height: int) -> int:
    """The smallest font size a caption shrinks to before it is shortened."""
    return max(MIN_FONT_PX, round(MIN_FONT_SIZE * min(width, height)))


def stroke_width_for(size: int) -> int:
    """Outline width for a font size."""
    return max(1, round(size / 15))


def layout_caption(
    quote: str,
    width: int,
    height: int,
    *,
    language: str | None = None,
    fonts: FontSet | None = None,
) -> CaptionLayout:
    """Lay a quote out as classic top/bottom meme captions on a width x height picture."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    fonts = fonts or discover_fonts()
    side, edge = round(SIDE_MARGIN * width), round(EDGE_MARGIN * height)
    safe_area = Box(side, edge, width - side, height - edge)
    block_height = round(MAX_BLOCK_HEIGHT * height)
    regions: dict[BlockPosition, Box] = {
        "top": Box(side, edge, width - side, edge + block_height),
        "bottom": Box(side, height - edge - block_height, width - side, height - edge),
    }
    smallest = min_font_size(width, height)
    largest = max(smallest, round(MAX_FONT_SIZE * min(width, height)))
    text = _normalize(quote[:MAX_QUOTE_CHARS])
    chain = fonts.chain(language, text)
    if _mostly_cjk(text):
        # Latin words inside a CJK quote look of a piece with it in the CJK face's own Latin.
        chain = tuple(sorted(chain, key=lambda face: face.role != "cjk"))
    blocks = []
    dropped: list[str] = []
    top_text, bottom_text = split_quote(text)
    positions: tuple[tuple[BlockPosition, str], ...] = (("top", top_text), ("bottom", bottom_text))
    for position, block_text in positions:
        if not chain:
            dropped.append(block_text)
        if not block_text or not chain:
            continue
        region = regions[position]
        # Even the narrowest glyphs (".", "I", a space) are about a tenth of an em: more never fits.
        most = math.ceil(MAX_LINES * region.width / (0.1 * smallest))
        clamped = len(block_text) > most or (position == "bottom" and len(quote) > MAX_QUOTE_CHARS)
        units, lost = _segment(_uppercase(block_text[:most], language), chain, fonts.emoji)
        dropped.append(lost)
        fitter = _BlockFitter(units, region, chain, (smallest, largest), clamped=clamped)
        block = fitter.fit(position)
        if block is not None:
            blocks.append(block)
    return CaptionLayout(width, height, tuple(blocks), safe_area, smallest, "".join(dropped))


# --- the quote as text ---------------------------------------------------------------------------------------------


def split_quote(quote: str) -> tuple[str, str]:
    """Split a quote into (top, bottom) captions: newline, then " / " or " | ", then two long sentences."""
    text = _normalize(quote)
    lines = [_collapse(line) for line in text.split("\n")]
    lines = [line for line in lines if line]
    if len(lines) >= 2:
        return lines[0], " ".join(lines[1:])
    text = lines[0] if lines else ""
    separator = SETUP_SEPARATOR.search(text)
    if separator and separator.start() > 0 and separator.end() < len(text):
        return text[: separator.start()], text[separator.end() :]
    for boundary in SENTENCE_END.finditer(text):
        first, rest = text[: boundary.start()].strip(), text[boundary.end() :].strip()
        if _weight(first) >= MIN_SENTENCE_WEIGHT:
            if _weight(rest) >= MIN_SENTENCE_WEIGHT:
                return first, rest
            break
    return "", text


def _normalize(text: str) -> str:
    """NFC, newlines unified, control characters and stray format characters removed."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        keep = ch == "\n" or ch in NEEDS_NO_GLYPH or 0xE0020 <= ord(ch) <= 0xE007F  # tags spell flags like 🏴󠁧󠁢󠁳󠁣󠁴󠁿
        if keep or category not in ("Cc", "Cf", "Cs", "Co"):
            kept.append(" " if category == "Zs" else "\n" if category in ("Zl", "Zp") else ch)
        elif ch == "\t":
            kept.append(" ")
    return "".join(kept)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _mostly_cjk(text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha()]
    cjk = sum(_is_wrappable_cjk(ord(ch)) or 0xAC00 <= ord(ch) <= 0xD7A3 for ch in letters)
    return cjk * 4 > len(letters)  # one CJK character carries about as much as a short word


def _weight(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text if not ch.isspace())


def _uppercase(text: str, language: str | None) -> str:
    """Classic meme capitals for cased scripts; CJK has no case and is left as is."""
    if (language or "").lower()[:2] in ("tr", "az"):
        text = text.replace("i", "İ").replace("ı", "I")
    return _collapse(text.upper())


# --- segmentation into unbreakable units, each piece in a font that covers it -------------------------------------

AtomKind = Literal["word", "cjk", "emoji"]


@dataclass(frozen=True)
class _Atom:
    text: str
    kind: AtomKind
    space_before: bool


@dataclass(frozen=True)
class _Piece:
    text: str
    face: FontFace


# In a unit's items, None stands for a word space kept inside the unit (e.g. before a glued "!").
_Item = _Piece | None


@dataclass(frozen=True)
class _Unit:
    items: tuple[_Item, ...]
    space_before: bool


def _is_wrappable_cjk(cp: int) -> bool:
    """Han, kana, CJK punctuation and full-width forms wrap per character (Hangul wraps at spaces)."""
    return (
        0x2E80 <= cp <= 0x2FDF
        or 0x3000 <= cp <= 0x312F
        or 0x31A0 <= cp <= 0x31FF
        or 0x3200 <= cp <= 0x4DBF
        or 0x4E00 <= cp <= 0x9FFF
        or 0xF900 <= cp <= 0xFAFF
        or 0xFE30 <= cp <= 0xFE4F
        or 0xFF00 <= cp <= 0xFFEF
        or 0x20000 <= cp <= 0x3FFFF
    )


def _is_pictographic(cp: int) -> bool:
    return (
        0x1F000 <= cp <= 0x1FAFF
        or 0x2600 <= cp <= 0x27BF
        or 0x2300 <= cp <= 0x23FF
        or 0x2B00 <= cp <= 0x2BFF
        or cp in (0x3030, 0x303D, 0x3297, 0x3299)
    )


def _emoji_end(text: str, i: int) -> int:
    """End of the emoji cluster starting at i (ZWJ sequences, modifiers, flags, keycaps), or i if none."""
    n = len(text)
    cp = ord(text[i])
    after = text[i + 1] if i + 1 < n else ""
    if 0x1F1E6 <= cp <= 0x1F1FF:  # regional indicators pair into a flag
        return i + 2 if after and 0x1F1E6 <= ord(after) <= 0x1F1FF else i + 1
    if text[i] in "#*0123456789":
        if after == "\u20e3":
            return i + 2
        if after == "\ufe0f" and text[i + 2 : i + 3] == "\u20e3":
            return i + 3
        return i
    if after == "\ufe0e" or not (_is_pictographic(cp) or after == "\ufe0f"):
        return i
    j = i + 1
    while j < n:
        c = ord(text[j])
        if c in (0xFE0F, 0x20E3) or 0x1F3FB <= c <= 0x1F3FF or 0xE0020 <= c <= 0xE007F:
            j += 1
        elif c == 0x200D and j + 1 < n and _is_pictographic(ord(text[j + 1])):
            j += 2
        else:
            break
    return j


def _atoms(text: str) -> Iterator[_Atom]:
    """Words, single wrappable CJK characters and emoji clusters, each knowing if a space came before."""
    word: list[str] = []
    word_space = False
    space = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == " ":
            if word:
                yield _Atom("".join(word), "word", word_space)
                word = []
            space = True
            i += 1
            continue
        end = _emoji_end(text, i)
        if end > i or _is_wrappable_cjk(ord(ch)):
            if word:
                yield _Atom("".join(word), "word", word_space)
                word = []
            end = max(end, i + 1)
            # Marks that combine with a CJK character stay with it.
            while end < len(text) and unicodedata.combining(text[end]):
                end += 1
            yield _Atom(text[i:end], "emoji" if _emoji_end(text, i) > i else "cjk", space)
            space = False
            i = end
            continue
        if not word:
            word_space, space = space, False
        word.append(ch)
        i += 1
    if word:
        yield _Atom("".join(word), "word", word_space)


def _joins_previous(atom: _Atom, previous: _Atom) -> bool:
    """Whether no line may break between previous and atom."""
    if atom.text[0] in NO_LINE_START or previous.text[-1] in NO_LINE_END:
        return True
    if atom.space_before:
        return False
    if atom.kind == "emoji":
        return previous.kind != "emoji"
    return atom.kind != "cjk" and previous.kind != "cjk"


def _segment(text: str, chain: tuple[FontFace, ...], emoji: FontFace | None) -> tuple[list[_Unit], str]:
    """Units that never break inside, their pieces in covering fonts; also the characters dropped."""
    cjk_first = tuple(sorted(chain, key=lambda face: face.role != "cjk"))
    units: list[list[_Item]] = []
    spaces: list[bool] = []
    dropped: list[str] = []
    previous: _Atom | None = None
    pending_space = False
    for atom in _atoms(text):
        pieces, lost = _pieces(atom, cjk_first if atom.kind == "cjk" else chain, emoji)
        dropped.append(lost)
        if not pieces:
            pending_space = pending_space or atom.space_before
            continue
        space_before = atom.space_before or pending_space
        pending_space = False
        if previous is not None and _joins_previous(replace(atom, space_before=space_before), previous):
            if space_before:
                units[-1].append(None)
            units[-1].extend(pieces)
        else:
            units.append(list(pieces))
            spaces.append(space_before and bool(units[:-1]))
        previous = atom
    return [_Unit(tuple(items), space) for items, space in zip(units, spaces, strict=True)], "".join(dropped)


def _pieces(atom: _Atom, chain: tuple[FontFace, ...], emoji: FontFace | None) -> tuple[list[_Piece], str]:
    """The atom split into runs of the first face covering them; what nothing covers is dropped."""
    if atom.kind == "emoji":
        if emoji is not None and emoji.covers(atom.text):
            return [_Piece(atom.text, emoji)], ""
        symbol = "".join(ch for ch in atom.text if ch not in NEEDS_NO_GLYPH)
        face = _first_covering(chain, symbol) if len(symbol) == 1 else None
        return ([_Piece(symbol, face)], "") if face else ([], atom.text)
    whole = _first_covering(chain, atom.text)
    if whole is not None:
        return [_Piece(atom.text, whole)], ""
    pieces: list[_Piece] = []
    dropped = []
    for ch in atom.text:
        if pieces and (ch in NEEDS_NO_GLYPH or unicodedata.combining(ch)) and pieces[-1].face.covers(ch):
            pieces[-1] = _Piece(pieces[-1].text + ch, pieces[-1].face)
            continue
        face = _first_covering(chain, ch)
        if face is None:
            dropped.append(ch)
        elif pieces and pieces[-1].face == face:
            pieces[-1] = _Piece(pieces[-1].text + ch, face)
        else:
            pieces.append(_Piece(ch, face))
    return pieces, "".join(dropped)


def _first_covering(chain: Iterable[FontFace], text: str) -> FontFace | None:
    return next((face for face in chain if face.covers(text)), None)


# --- measuring ------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _advance(face: FontFace, size: int, text: str) -> float:
    if face.role == "emoji":
        return _emoji_size(face, text, size)[0]
    return face.load(size).getlength(text)


@lru_cache(maxsize=8192)
def _ink(face: FontFace, size: int, stroke: int, text: str) -> Box:
    """Ink box of text drawn at the origin on its baseline, outline included."""
    if face.role == "emoji":
        width, height = _emoji_size(face, text, size)
        drop = round(EMOJI_DROP * size)
        return Box(0, drop - height, width, drop)
    left, top, right, bottom = face.load(size).getbbox(text, anchor="ls", stroke_width=stroke)
    return Box(int(left), int(top), int(right), int(bottom))


@lru_cache(maxsize=512)
def emoji_bitmap(face: FontFace, cluster: str) -> Image.Image:
    """The colour glyph of an emoji cluster at the font's native size (RGBA); callers must not modify it."""
    font = face.load(face.bitmap_size or 109)
    left, top, right, bottom = font.getbbox(cluster)
    image = Image.new("RGBA", (max(1, int(right - left)), max(1, int(bottom - top))))
    ImageDraw.Draw(image).text((-left, -top), cluster, font=font, embedded_color=True)
    return image


@lru_cache(maxsize=2048)
def _emoji_size(face: FontFace, cluster: str, size: int) -> tuple[int, int]:
    bitmap = emoji_bitmap(face, cluster)
    height = max(1, round(EMOJI_HEIGHT * size))
    return max(1, round(bitmap.width * height / bitmap.height)), height


def _reference_extent(face: FontFace, size: int, stroke: int) -> tuple[int, int]:
    """(ascent, descent) of a face's usual glyphs with outline, for steady line spacing."""
    if face.role == "emoji":
        return 0, 0  # every emoji has the same box, which the line takes anyway
    box = _ink(face, size, stroke, REFERENCE_TEXT.get(face.role, REFERENCE_TEXT_DEFAULT))
    return -box.top, box.bottom


# --- fitting a block ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    text: str
    runs: tuple[CaptionRun, ...]  # relative to pen (0, baseline 0)
    ink: Box
    ascent: int
    descent: int
    advance: int  # pen movement over the whole line


Failure = Literal["too wide", "too tall"]


class _BlockFitter:
    """Finds the largest size at which a block's units fit its region in at most MAX_LINES balanced lines."""

    def __init__(
        self,
        units: list[_Unit],
        region: Box,
        chain: tuple[FontFace, ...],
        sizes: tuple[int, int],
        *,
        clamped: bool,
    ) -> None:
        self.units = units
        self.clamped = clamped  # the text was cut before layout: it must end in an ellipsis
        self.region = region
        self.space_face = chain[0]
        self.smallest, self.largest = sizes

    def fit(self, position: BlockPosition) -> CaptionBlock | None:
        """The block at the largest fitting size, else at the smallest size shortened with an ellipsis."""
        if not self.units:
            return None
        if not self.clamped:
            found = self._largest_fit(self.units, self.smallest)
            words = _joined_at_non_spaces(self.units)
            if found is not None and any(unit.space_before for unit in self.units) and len(words) < len(self.units):
                # Spaces inside CJK text mark phrases: break there if it costs little size.
                smallest = max(self.smallest, math.ceil(found[0] * SPACE_BREAK_SHRINK))
                found = self._largest_fit(words, smallest) or found
            if found is not None:
                return self._place(position, *found, truncated=False)
        for size in _shrinking_sizes(self.smallest):
            lines = self._truncated(size)
            if lines:
                return self._place(position, size, lines, truncated=True)
        return None

    def _largest_fit(self, units: list[_Unit], smallest: int) -> tuple[int, list[_Line]] | None:
        best: tuple[int, list[_Line]] | None = None
        low, high = smallest, self.largest
        attempt = self._attempt(high, units, MAX_LINES)
        if not isinstance(attempt, str):
            return high, attempt
        high -= 1
        while low <= high:
            middle = (low + high) // 2
            attempt = self._attempt(middle, units, MAX_LINES)
            if isinstance(attempt, str):
                high = middle - 1
            else:
                best = middle, attempt
                low = middle + 1
        return best

    def _truncated(self, size: int) -> list[_Line]:
        """Lines holding as much of the text as fits at this size, ending in an ellipsis."""
        stroke = stroke_width_for(size)
        limit = self.region.width - 2 * stroke
        units = _split_overlong(self.units, [self._unit_width(u, size) for u in self.units], limit)
        widths = [self._unit_width(unit, size) for unit in units]
        for lines_allowed in range(MAX_LINES, 0, -1):
            fitting = _greedy_count(widths, self._spaces(units, size), lines_allowed, limit)
            # The ellipsis may push the last unit out; a few steps back always suffice.
            for count in range(fitting, max(-1, fitting - 8), -1):
                attempt = self._attempt(size, _with_ellipsis(units[:count], self.space_face), lines_allowed)
                if not isinstance(attempt, str):
                    return attempt
                if attempt == "too tall":
                    break
        return []

    def _attempt(self, size: int, units: list[_Unit], lines_allowed: int) -> list[_Line] | Failure:
        """Balanced lines at this size if they fit the region, else why not."""
        stroke = stroke_width_for(size)
        limit = self.region.width - 2 * stroke
        widths = [self._unit_width(unit, size) for unit in units]
        if max(widths) > limit or sum(widths) > lines_allowed * limit:
            return "too wide"
        spaces = self._spaces(units, size)
        for count in range(1, min(lines_allowed, len(units)) + 1):
            balanced = _balanced_breaks(widths, spaces, count)
            if balanced is None or balanced[0] > limit:
                continue
            starts = (0, *balanced[1], len(units))
            lines = [self._compose(units[a:b], size, stroke) for a, b in itertools.pairwise(starts)]
            if any(line.ink.width > self.region.width for line in lines):
                continue
            if _stacked_height(lines, size) > self.region.height:
                return "too tall"
            return lines
        return "too wide"

    def _unit_width(self, unit: _Unit, size: int) -> float:
        return self._runs(unit.items, size)[1]

    def _spaces(self, units: Sequence[_Unit], size: int) -> list[float]:
        """Width of the space before each unit (0 where none), in the font of the text before it."""
        spaces = []
        for i, unit in enumerate(units):
            if i == 0 or not unit.space_before:
                spaces.append(0.0)
                continue
            last = units[i - 1].items[-1]
            face = last.face if last is not None and last.face.role != "emoji" else self.space_face
            spaces.append(_advance(face, size, " "))
        return spaces

    def _compose(self, units: Sequence[_Unit], size: int, stroke: int) -> _Line:
        """One line: runs merged per face, pens at whole pixels, ink relative to (0, baseline)."""
        items = _line_items(units)
        runs, advance = self._runs(items, size)
        placed = []
        ink: Box | None = None
        ascent = descent = 0
        for face, text, x in runs:
            box = _ink(face, size, stroke, text).shift(x, 0)
            if box.width > 0 and box.height > 0:
                ink = box if ink is None else ink.union(box)
            ref_ascent, ref_descent = _reference_extent(face, size, stroke)
            ascent, descent = max(ascent, ref_ascent, -box.top), max(descent, ref_descent, box.bottom)
            placed.append(CaptionRun(text.rstrip(" "), face, x, 0, box))
        text = "".join(" " if item is None else item.text for item in items)
        return _Line(text, tuple(placed), ink or Box(0, -ascent, 0, descent), ascent, descent, advance)

    def _runs(self, items: Sequence[_Item], size: int) -> tuple[list[tuple[FontFace, str, int]], int]:
        """Items merged into (face, text, pen x) runs, one per face change or emoji; and the total advance."""
        runs: list[tuple[FontFace, str, int]] = []
        gap = 0.0  # a space after an emoji, which has no font to carry it
        for item in items:
            last = runs[-1] if runs else None
            open_text = last is not None and last[0].role != "emoji"
            if item is None:
                if last is not None and open_text:
                    runs[-1] = (last[0], last[1] + " ", last[2])
                else:
                    gap += _advance(self.space_face, size, " ")
                continue
            if last is not None and open_text and last[0] == item.face and not gap:
                runs[-1] = (last[0], last[1] + item.text, last[2])
                continue
            pen = last[2] + round(_advance(last[0], size, last[1])) if last is not None else 0
            runs.append((item.face, item.text, pen + round(gap)))
            gap = 0.0
        advance = runs[-1][2] + round(_advance(runs[-1][0], size, runs[-1][1])) if runs else 0
        return runs, advance

    def _place(self, position: BlockPosition, size: int, lines: list[_Line], *, truncated: bool) -> CaptionBlock:
        """Lines centred in the region, stacked from its top edge (top block) or up from its bottom edge."""
        gap = round(LINE_GAP * size)
        baselines = []
        y = 0
        for i, line in enumerate(lines):
            y += line.ascent if i == 0 else lines[i - 1].descent + gap + line.ascent
            baselines.append(y)
        block_height = baselines[-1] + lines[-1].descent
        top = self.region.top if position == "top" else self.region.bottom - block_height
        placed = []
        for line, baseline in zip(lines, baselines, strict=True):
            dx = self.region.left + (self.region.width - line.ink.width) // 2 - line.ink.left
            dy = top + baseline
            runs = tuple(CaptionRun(run.text, run.face, run.x + dx, dy, run.box.shift(dx, dy)) for run in line.runs)
            placed.append(CaptionLine(line.text, runs, line.ink.shift(dx, dy)))
        return CaptionBlock(position, tuple(placed), size, stroke_width_for(size), self.region, truncated)


def _line_items(units: Sequence[_Unit]) -> list[_Item]:
    items: list[_Item] = []
    for i, unit in enumerate(units):
        if i > 0 and unit.space_before:
            items.append(None)
        items.extend(unit.items)
    return items


def _stacked_height(lines: Sequence[_Line], size: int) -> int:
    gap = round(LINE_GAP * size)
    return sum(line.ascent + line.descent for line in lines) + gap * (len(lines) - 1)


def _balanced_breaks(
    widths: Sequence[float], spaces: Sequence[float], count: int
) -> tuple[float, tuple[int, ...]] | None:
    """Breaks into exactly `count` lines minimising the longest line (then the spread); None if too few units."""
    n = len(widths)
    if count > n:
        return None
    prefix = [0.0]
    for width, space in zip(widths, spaces, strict=True):
        prefix.append(prefix[-1] + width + space)

    def span(a: int, b: int) -> float:
        return prefix[b] - prefix[a] - spaces[a]

    def best_split(a: int, b: int) -> tuple[float, float, int]:
        """Best single break in units[a:b] (b - a >= 2): (longest, spread, break)."""
        # span(a, j) grows and span(j, b) shrinks with j: the optimum sits where they cross.
        j = bisect.bisect_left(range(a + 1, b), 0.0, key=lambda k: span(a, k) - span(k, b)) + a + 1
        options = []
        for k in (j - 1, j):
            if a < k < b:
                first, second = span(a, k), span(k, b)
                options.append((max(first, second), abs(first - second), k))
        return min(options)

    if count == 1:
        return span(0, n), ()
    if count == 2:
        longest, _spread, k = best_split(0, n)
        return longest, (k,)
    best: tuple[float, float, tuple[int, ...]] | None = None
    for i in range(1, n - 1):
        first = span(0, i)
        longest, _spread, k = best_split(i, n)
        shortest = min(first, span(i, k), span(k, n))
        candidate = (max(first, longest), max(first, longest) - shortest, (i, k))
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    assert best is not None
    return best[0], best[2]


def _joined_at_non_spaces(units: Sequence[_Unit]) -> list[_Unit]:
    """Units merged so that lines can break only at spaces."""
    merged: list[_Unit] = []
    for unit in units:
        if merged and not unit.space_before:
            merged[-1] = _Unit((*merged[-1].items, *unit.items), merged[-1].space_before)
        else:
            merged.append(unit)
    return merged


def _greedy_count(widths: Sequence[float], spaces: Sequence[float], lines: int, limit: float) -> int:
    """How many leading units fit in `lines` lines filled greedily (greedy maximises this count)."""
    used, line = 0.0, 1
    for i, width in enumerate(widths):
        needed = width if used == 0 else used + spaces[i] + width
        if needed <= limit:
            used = needed
            continue
        line += 1
        if line > lines or width > limit:
            return i
        used = width
    return len(widths)


def _with_ellipsis(units: list[_Unit], fallback: FontFace) -> list[_Unit]:
    """Units with an ellipsis glued to the last one, in its font when that font has the glyph."""
    last = units[-1].items[-1] if units else None
    face = last.face if last is not None and last.face.role != "emoji" and last.face.covers(ELLIPSIS) else fallback
    ellipsis = _Piece(ELLIPSIS if face.covers(ELLIPSIS) else "...", face)
    if not units:
        return [_Unit((ellipsis,), False)]
    return [*units[:-1], _Unit((*units[-1].items, ellipsis), units[-1].space_before)]


def _split_overlong(units: list[_Unit], widths: Sequence[float], limit: float) -> list[_Unit]:
    """Units wider than a line broken between characters, as a last resort before shortening."""
    result: list[_Unit] = []
    for unit, width in zip(units, widths, strict=True):
        if width <= limit:
            result.append(unit)
            continue
        space = unit.space_before
        first = len(result)
        for item in unit.items:
            if item is None:
                space = True
                continue
            chars = [item.text] if item.face.role == "emoji" else _graphemes(item.text)
            for chunk in chars:
                piece = _Piece(chunk, item.face)
                if len(result) > first and (chunk[0] in NO_LINE_START or _ends_opening(result[-1])):
                    previous = result[-1]
                    result[-1] = _Unit((*previous.items, *((None,) if space else ()), piece), previous.space_before)
                else:
                    result.append(_Unit((piece,), space))
                space = False
    return result


def _ends_opening(unit: _Unit) -> bool:
    last = unit.items[-1]
    return last is not None and last.text[-1] in NO_LINE_END


def _graphemes(text: str) -> list[str]:
    """Characters with their combining marks and joiners attached."""
    clusters: list[str] = []
    for ch in text:
        if clusters and (unicodedata.combining(ch) or ch in NEEDS_NO_GLYPH):
            clusters[-1] += ch
        else:
            clusters.append(ch)
    return clusters


def _shrinking_sizes(smallest: int) -> Iterator[int]:
    """The smallest size, then smaller ones for pictures too small to hold even one line of it."""
    size = smallest
    while size >= 4:
        yield size
        size = math.floor(size * 0.8)
