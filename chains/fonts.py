"""Caption fonts: discovery on disk, per-character coverage from the font's cmap, and a cached loader."""

from __future__ import annotations

import bisect
import logging
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Literal

from PIL import ImageFont, features

__all__ = [
    "FONT_DIR_ENV",
    "NEEDS_NO_GLYPH",
    "Coverage",
    "FontFace",
    "FontRole",
    "FontSet",
    "default_font_dirs",
    "discover_fonts",
    "load_font",
]

log = logging.getLogger(__name__)

FONT_DIR_ENV = "MEMEBOT_FONT_DIR"
REPO_FONT_DIR = Path(__file__).resolve().parent.parent / "fonts"
SYSTEM_FONT_DIRS = (Path("/usr/local/share/fonts"), Path("/usr/share/fonts"))

FontRole = Literal["display", "sans", "cjk", "emoji", "builtin"]

# File names in order of preference per role; a font bundled in the repo's fonts/ wins over the system's.
PREFERRED_FILES: dict[FontRole, tuple[str, ...]] = {
    "display": (
        "Anton-Regular.ttf",
        "BebasNeue-Regular.otf",
        "BebasNeue-Regular.ttf",
        "Oswald-Bold.ttf",
        "LeagueGothic-Regular.otf",
    ),
    "sans": (
        "DejaVuSans-Bold.ttf",
        "NotoSans-Bold.ttf",
        "LiberationSans-Bold.ttf",
        "FreeSansBold.ttf",
        "DejaVuSans.ttf",
    ),
    "cjk": (
        "NotoSansCJK-Bold.ttc",
        "NotoSansCJK-Black.ttc",
        "NotoSansCJK-Regular.ttc",
        "wqy-microhei.ttc",
        "wqy-zenhei.ttc",
    ),
    "emoji": ("NotoColorEmoji.ttf", "NotoColorEmoji-Regular.ttf", "TwemojiMozilla.ttf"),
}

# Where each role comes from, for messages telling a developer what to install.
DEBIAN_PACKAGES: dict[FontRole, str] = {
    "display": "fonts-bebas-neue",
    "sans": "fonts-dejavu-core",
    "cjk": "fonts-noto-cjk",
    "emoji": "fonts-noto-color-emoji",
}

# Noto Sans CJK collections name each regional face "Noto Sans CJK JP" and so on.
CJK_VARIANTS = ("SC", "TC", "HK", "JP", "KR")

# Joiners and variation selectors steer shaping; fonts need not map them.
NEEDS_NO_GLYPH = frozenset("\u200c\u200d\ufe0e\ufe0f")

# Characters worth probing in Pillow's built-in font (a small Aileron subset), which has no file to read.
BUILTIN_PROBE = (*range(0x20, 0x250), 0x2013, 0x2014, 0x2018, 0x2019, 0x201C, 0x201D, 0x2026, 0x20AC)


class FontFileError(Exception):
    """The font file is not an OpenType/TrueType font this module can read"""


@dataclass(frozen=True)
class Coverage:
    """The code points a font maps to a real glyph, as sorted inclusive ranges."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[int, int]]) -> Coverage:
        """Merge possibly overlapping or adjacent inclusive ranges."""
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted(ranges):
            if ends and start <= ends[-1] + 1:
                if end > ends[-1]:
                    ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
        return cls(tuple(starts), tuple(ends))

    def __contains__(self, codepoint: object) -> bool:
        if not isinstance(codepoint, int):
            return False
        i = bisect.bisect_right(self.starts, codepoint) - 1
        return i >= 0 and codepoint <= self.ends[i]

    def covers(self, text: str) -> bool:
        """Whether every character of text that needs a glyph has one."""
        return all(ord(ch) in self for ch in text if ch not in NEEDS_NO_GLYPH)


@dataclass(frozen=True)
class FontFace:
    """One face of a font file (a collection holds several), with what it can draw."""

    path: str | None  # None: Pillow's built-in font
    index: int
    family: str
    role: FontRole
    coverage: Coverage = field(compare=False, repr=False)  # large; identity is the file and face
    bitmap_size: int | None = None  # colour bitmap fonts only render at their strike size
    variant: str = ""  # CJK regional variant: SC, TC, HK, JP, KR

    def covers(self, text: str) -> bool:
        """Whether this face has a glyph for every character of text."""
        return self.coverage.covers(text)

    def load(self, size: int) -> ImageFont.FreeTypeFont:
        """The Pillow font at a pixel size (bitmap faces always load at their strike size)."""
        return load_font(self.path, self.index, self.bitmap_size or size)


@dataclass(frozen=True)
class FontSet:
    """The fonts a caption may use; `chain` orders them for one quote."""

    display: FontFace | None
    sans: FontFace | None
    cjk: tuple[FontFace, ...]
    emoji: FontFace | None
    builtin: FontFace | None = None

    def chain(self, language: str | None = None, text: str = "") -> tuple[FontFace, ...]:
        """Text faces in fallback order: display, wide sans, the CJK face for the language, built-in."""
        faces = [self.display, self.sans, self.cjk_face(language, text), self.builtin]
        return tuple(face for face in faces if face is not None)

    def cjk_face(self, language: str | None = None, text: str = "") -> FontFace | None:
        """The CJK face whose regional glyph forms suit the language (guessed from text if unknown)."""
        if not self.cjk:
            return None
        wanted = cjk_variant(language, text)
        return next((face for face in self.cjk if face.variant == wanted), self.cjk[0])

    @property
    def faces(self) -> tuple[FontFace, ...]:
        """Every face in the set."""
        all_faces = (self.display, self.sans, *self.cjk, self.emoji, self.builtin)
        return tuple(face for face in all_faces if face is not None)

    def missing_roles(self) -> tuple[FontRole, ...]:
        """Roles no font was found for."""
        found = {face.role for face in self.faces}
        return tuple(role for role in DEBIAN_PACKAGES if role not in found)


def cjk_variant(language: str | None, text: str = "") -> str:
    """Map a language tag (or, without one, the script in text) to a Noto CJK regional variant."""
    tag = (language or "").lower().replace("_", "-")
    if tag.startswith("ja"):
        return "JP"
    if tag.startswith("ko"):
        return "KR"
    if tag.startswith("zh"):
        if tag.endswith(("-hk", "-mo")) or "-hant-hk" in tag:
            return "HK"
        if "hant" in tag or tag.endswith("-tw"):
            return "TC"
        return "SC"
    if any(0x3040 <= ord(ch) <= 0x30FF for ch in text):  # hiragana or katakana
        return "JP"
    if any(0xAC00 <= ord(ch) <= 0xD7A3 for ch in text):  # hangul syllables
        return "KR"
    return "SC"


@lru_cache(maxsize=512)
def load_font(path: str | None, index: int, size: int) -> ImageFont.FreeTypeFont:
    """Load (once per path, face and size) a Pillow FreeType font; path None is Pillow's built-in."""
    if path is None:
        font = ImageFont.load_default(size)
        if not isinstance(font, ImageFont.FreeTypeFont):
            raise FontFileError("Pillow was built without FreeType, so no scalable font is available")
        return font
    return ImageFont.truetype(path, size, index=index)


def default_font_dirs() -> tuple[Path, ...]:
    """Where fonts are looked for: $MEMEBOT_FONT_DIR (os.pathsep-separated) only if set, else the repo's
    fonts/, then the user's and the system's font directories."""
    override = os.environ.get(FONT_DIR_ENV)
    if override:
        return tuple(Path(d) for d in override.split(os.pathsep) if d)
    return (REPO_FONT_DIR, Path.home() / ".local/share/fonts", *SYSTEM_FONT_DIRS)


def discover_fonts(dirs: Iterable[Path] | None = None) -> FontSet:
    """The caption fonts found in dirs (default: `default_font_dirs()`); cached per list of dirs."""
    return _discover_in(tuple(dirs) if dirs is not None else default_font_dirs())


@lru_cache(maxsize=8)
def _discover_in(dirs: tuple[Path, ...]) -> FontSet:
    files = _font_files(dirs)
    display = _first_face(files, "display")
    sans = _first_face(files, "sans")
    cjk = _cjk_faces(files)
    emoji = _first_face(files, "emoji")
    builtin = None
    if display is None and sans is None and not cjk:
        if features.check("freetype2"):
            shown = ", ".join(map(str, dirs))
            log.warning("no caption fonts found in %s; using Pillow's built-in font (basic Latin only)", shown)
            builtin = FontFace(None, 0, "Pillow default", "builtin", _builtin_coverage())
        else:
            log.warning("no caption fonts found and Pillow lacks FreeType; captions will not be drawn")
    fonts = FontSet(display=display, sans=sans, cjk=cjk, emoji=emoji, builtin=builtin)
    for role in fonts.missing_roles():
        log.info("no %s caption font found; Debian package %s provides one", role, DEBIAN_PACKAGES[role])
    return fonts


def _builtin_coverage() -> Coverage:
    """What the built-in font draws: every probed character whose glyph is not the .notdef box."""
    font = load_font(None, 0, 32)
    notdef = bytes(font.getmask("\U0010fffd"))
    drawn = [cp for cp in BUILTIN_PROBE if cp == 0x20 or bytes(font.getmask(chr(cp))) != notdef]
    return Coverage.from_ranges((cp, cp) for cp in drawn)


def _font_files(dirs: tuple[Path, ...]) -> list[dict[str, Path]]:
    """Per directory, in order, the font files under it by file name."""
    found: list[dict[str, Path]] = []
    for directory in dirs:
        by_name: dict[str, Path] = {}
        for root, _subdirs, names in os.walk(directory):
            for name in names:
                if name.lower().endswith((".ttf", ".otf", ".ttc")):
                    by_name.setdefault(name, Path(root) / name)
        found.append(by_name)
    return found


def _candidates(files: list[dict[str, Path]], role: FontRole) -> Iterator[Path]:
    for by_name in files:
        for name in PREFERRED_FILES[role]:
            if name in by_name:
                yield by_name[name]


def _first_face(files: list[dict[str, Path]], role: FontRole) -> FontFace | None:
    for path in _candidates(files, role):
        faces = _read_faces(path, role)
        if faces:
            return faces[0]
    return None


def _cjk_faces(files: list[dict[str, Path]]) -> tuple[FontFace, ...]:
    for path in _candidates(files, "cjk"):
        faces = _read_faces(path, "cjk")
        if faces:
            return faces
    return ()


def _read_faces(path: Path, role: FontRole) -> tuple[FontFace, ...]:
    """Every face of a font file with its coverage; an unreadable file gives none (and a warning)."""
    try:
        with path.open("rb") as stream:
            offsets = _face_offsets(stream)
            faces = []
            for index, offset in enumerate(offsets):
                tables = _table_directory(stream, offset)
                bitmap_size = _bitmap_strike(stream, tables)
                font = ImageFont.truetype(str(path), bitmap_size or 16, index=index)
                family = font.getname()[0] or path.stem
                if "Mono" in family:  # monospaced faces of a collection are never the better pick
                    continue
                variant = next((v for v in CJK_VARIANTS if family.endswith(" " + v)), "")
                coverage = _read_cmap(stream, tables)
                faces.append(FontFace(str(path), index, family, role, coverage, bitmap_size, variant))
            return tuple(faces)
    except (OSError, FontFileError, struct.error) as exc:
        log.warning("skipping font %s: %s", path, exc)
        return ()


def _read_at(stream: BinaryIO, offset: int, size: int) -> bytes:
    stream.seek(offset)
    data = stream.read(size)
    if len(data) != size:
        raise FontFileError("truncated font file")
    return data


def _face_offsets(stream: BinaryIO) -> tuple[int, ...]:
    """Offsets of each face's table directory (one for a plain font, several for a .ttc)."""
    tag = _read_at(stream, 0, 4)
    if tag != b"ttcf":
        return (0,)
    (count,) = struct.unpack(">I", _read_at(stream, 8, 4))
    return struct.unpack(f">{count}I", _read_at(stream, 12, 4 * count))


def _table_directory(stream: BinaryIO, offset: int) -> dict[bytes, tuple[int, int]]:
    sfnt_version, count = struct.unpack(">IH", _read_at(stream, offset, 6))
    if sfnt_version not in (0x00010000, 0x4F54544F, 0x74727565):  # TrueType, 'OTTO', 'true'
        raise FontFileError("not an OpenType font")
    records = _read_at(stream, offset + 12, 16 * count)
    return {tag: (table_offset, length) for tag, _sum, table_offset, length in struct.iter_unpack(">4sIII", records)}


def _read_cmap(stream: BinaryIO, tables: dict[bytes, tuple[int, int]]) -> Coverage:
    """Coverage from the best Unicode subtable: format 12 (full Unicode) over format 4 (BMP)."""
    if b"cmap" not in tables:
        raise FontFileError("font has no cmap table")
    cmap_offset, cmap_length = tables[b"cmap"]
    cmap = _read_at(stream, cmap_offset, cmap_length)
    (count,) = struct.unpack_from(">H", cmap, 2)
    subtables: dict[int, int] = {}
    for i in range(count):
        platform, encoding, offset = struct.unpack_from(">HHI", cmap, 4 + 8 * i)
        if (platform, encoding) in ((3, 10), (0, 4), (0, 6), (3, 1), (0, 3)):
            (fmt,) = struct.unpack_from(">H", cmap, offset)
            subtables.setdefault(fmt, offset)
    if 12 in subtables:
        return _cmap_format12(cmap, subtables[12])
    if 4 in subtables:
        return _cmap_format4(cmap, subtables[4])
    raise FontFileError("font has no Unicode cmap subtable of format 4 or 12")


def _cmap_format12(cmap: bytes, offset: int) -> Coverage:
    (groups,) = struct.unpack_from(">I", cmap, offset + 12)
    ranges = []
    for start, end, glyph in struct.iter_unpack(">III", cmap[offset + 16 : offset + 16 + 12 * groups]):
        # A group starting at glyph 0 maps its first code point to .notdef.
        first = start + 1 if glyph == 0 else start
        if first <= end:
            ranges.append((first, end))
    return Coverage.from_ranges(ranges)


def _cmap_format4(cmap: bytes, offset: int) -> Coverage:
    (seg_x2,) = struct.unpack_from(">H", cmap, offset + 6)
    segments = seg_x2 // 2
    ends_at = offset + 14
    starts_at = ends_at + seg_x2 + 2
    deltas_at = starts_at + seg_x2
    range_offsets_at = deltas_at + seg_x2
    ranges = []
    for i in range(segments):
        (end,) = struct.unpack_from(">H", cmap, ends_at + 2 * i)
        (start,) = struct.unpack_from(">H", cmap, starts_at + 2 * i)
        (delta,) = struct.unpack_from(">H", cmap, deltas_at + 2 * i)
        (range_offset,) = struct.unpack_from(">H", cmap, range_offsets_at + 2 * i)
        if start == 0xFFFF:
            continue
        for code in range(start, end + 1):
            if range_offset == 0:
                glyph = (code + delta) & 0xFFFF
            else:
                # idRangeOffset counts bytes from its own slot into glyphIdArray.
                at = range_offsets_at + 2 * i + range_offset + 2 * (code - start)
                (glyph,) = struct.unpack_from(">H", cmap, at)
                glyph = (glyph + delta) & 0xFFFF if glyph else 0
            if glyph:
                ranges.append((code, code))
    return Coverage.from_ranges(ranges)


def _bitmap_strike(stream: BinaryIO, tables: dict[bytes, tuple[int, int]]) -> int | None:
    """The largest bitmap strike (ppem) of a colour bitmap font without outlines, else None."""
    if b"glyf" in tables or b"CFF " in tables or b"CFF2" in tables or b"CBLC" not in tables:
        return None
    cblc_offset, _length = tables[b"CBLC"]
    (count,) = struct.unpack(">I", _read_at(stream, cblc_offset + 4, 4))
    # Each BitmapSize record is 48 bytes; ppemY sits at byte 45 of it.
    sizes = [_read_at(stream, cblc_offset + 8 + 48 * i + 45, 1)[0] for i in range(count)]
    return max(sizes) if sizes else None
