"""An experiment's report: a summary per variant (table and CSV), a latency chart and a contact sheet, in Pillow."""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont, ImageOps
from rich.table import Table

from chains.fonts import discover_fonts
from lab.experiment import RowResult, Variant

SUMMARY_CSV: Final = "summary.csv"
LATENCY_CHART: Final = "latency.png"
CONTACT_SHEET: Final = "contact_sheet.png"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_INK = (33, 37, 41)
_MUTED = (120, 126, 133)
_GRID = (226, 229, 233)
_FIRST_TOKEN = (52, 120, 198)
_TOTAL = (230, 126, 34)
_ERROR = (200, 55, 55)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between the closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class VariantSummary:
    """What one variant did over the topics."""

    variant: str
    rows: int
    ok: int
    errors: int
    parsed: int
    parse_attempts: int
    first_token_p50: float | None
    first_token_p95: float | None
    total_p50: float | None
    total_p95: float | None
    quote_chars_mean: float | None
    points_per_meme: float | None
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def parse_rate(self) -> float | None:
        return self.parsed / self.parse_attempts if self.parse_attempts else None


def summarise(rows: Sequence[RowResult], variants: Sequence[Variant]) -> list[VariantSummary]:
    """One summary per variant, in the variants' order.

    Latency percentiles are over the rows that made a meme (a fast failure is not a fast meme); first-token
    latency over every row that got a token. Parse success counts the rows whose text reached the parser.
    """
    summaries: list[VariantSummary] = []
    for variant in variants:
        mine = [r for r in rows if r.variant == variant.label]
        ok = [r for r in mine if r.status == "ok"]
        first = [r.timings["first_token_s"] for r in mine if "first_token_s" in r.timings]
        total = [r.timings["total_s"] for r in ok if "total_s" in r.timings]
        quotes = [r.quote_chars for r in ok if r.quote_chars is not None]
        costs = {r.cost_points for r in mine}
        summaries.append(
            VariantSummary(
                variant=variant.label,
                rows=len(mine),
                ok=len(ok),
                errors=len(mine) - len(ok),
                parsed=sum(1 for r in mine if r.parsed),
                parse_attempts=sum(1 for r in mine if r.parsed is not None),
                first_token_p50=percentile(first, 50),
                first_token_p95=percentile(first, 95),
                total_p50=percentile(total, 50),
                total_p95=percentile(total, 95),
                quote_chars_mean=sum(quotes) / len(quotes) if quotes else None,
                points_per_meme=costs.pop() if len(costs) == 1 else None,
                error_kinds=dict(Counter(r.error_type or "error" for r in mine if r.status == "error")),
            )
        )
    return summaries


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def write_summary_csv(path: Path, summaries: Sequence[VariantSummary]) -> None:
    """summary.csv: one line per variant, seconds and points as plain numbers (blank when unknown)."""
    columns = (
        "variant",
        "rows",
        "ok",
        "errors",
        "parse_success",
        "parse_attempts",
        "first_token_p50_s",
        "first_token_p95_s",
        "total_p50_s",
        "total_p95_s",
        "quote_chars_mean",
        "points_per_meme_approx",
        "error_kinds",
    )
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for s in summaries:
            writer.writerow(
                (
                    s.variant,
                    s.rows,
                    s.ok,
                    s.errors,
                    s.parsed,
                    s.parse_attempts,
                    _number(s.first_token_p50),
                    _number(s.first_token_p95),
                    _number(s.total_p50),
                    _number(s.total_p95),
                    _number(s.quote_chars_mean, 1),
                    _number(s.points_per_meme, 0),
                    "; ".join(f"{kind}={count}" for kind, count in sorted(s.error_kinds.items())),
                )
            )


def summary_table(summaries: Sequence[VariantSummary], title: str = "Experiment") -> Table:
    """The summary as a Rich table, one row per variant."""
    table = Table(title=title, title_justify="left")
    table.add_column("variant: text / image / prompt", overflow="fold", min_width=16)
    for name in ("memes", "parsed", "errors", "1st tok p50", "p95", "total p50", "p95", "quote", "~points"):
        table.add_column(name, justify="right")
    for s in summaries:
        errors = ", ".join(f"{kind} {count}" for kind, count in sorted(s.error_kinds.items()))
        table.add_row(
            s.variant,
            f"{s.ok}/{s.rows}",
            f"{s.parsed}/{s.parse_attempts}" if s.parse_attempts else "–",
            f"[red]{s.errors}[/] ({errors})" if s.errors else "0",
            _seconds(s.first_token_p50),
            _seconds(s.first_token_p95),
            _seconds(s.total_p50),
            _seconds(s.total_p95),
            _number(s.quote_chars_mean, 0) or "–",
            _number(s.points_per_meme, 0),
        )
    table.caption = (
        "Seconds from the chain's start; quote: mean characters; ~points: Poe's approximate price of one meme, "
        "where known."
    )
    return table


@cache
def _font(size: int, sample: str = "") -> Font:
    # Labels read best in a plain sans; the caption's display face (often capitals only) comes last.
    fonts = discover_fonts()
    faces = [f for f in (fonts.sans, fonts.cjk_face(text=sample), fonts.builtin, fonts.display) if f is not None]
    text = "".join(ch for ch in sample if not ch.isspace())
    face = next((f for f in faces if f.covers(text)), faces[0] if faces else None)
    return face.load(size) if face is not None else ImageFont.load_default(size)


def _font_for(text: str, size: int) -> Font:
    # Latin labels share one font; a label in another script gets a face that covers it.
    return _font(size, "" if text.isascii() else text)


def _wrap(text: str, font: Font, width: int, max_lines: int) -> list[str]:
    """Greedy wrapping by words (by characters where a script has no spaces), ending in … when cut."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        tokens = paragraph.split(" ") if " " in paragraph else list(paragraph)
        joiner = " " if " " in paragraph else ""
        line = ""
        for token in tokens:
            candidate = f"{line}{joiner}{token}" if line else token
            if font.getlength(candidate) <= width or not line:
                line = candidate
            else:
                lines.append(line)
                line = token
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines


def _draw_lines(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    lines: list[str],
    font: Font,
    fill: tuple[int, int, int],
    gap: int = 4,
) -> None:
    x, y = xy
    for line in lines:
        draw.text((x, y), line, font=font, fill=fill)
        y += _line_height(font) + gap


def _line_height(font: Font) -> int:
    box = font.getbbox("Hg国")
    return int(box[3] - box[1])


def _nice_step(span: float, target_ticks: int = 6) -> float:
    raw = span / target_ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def draw_latency_chart(path: Path, rows: Sequence[RowResult], summaries: Sequence[VariantSummary]) -> None:
    """latency.png: per variant, every row's first-token and total latency as dots, with p50 and p95 marks."""
    label_w, notes_w, plot_w, lane_h, band_gap, top, bottom = 300, 230, 640, 22, 18, 86, 56
    band_h = 2 * lane_h
    width = label_w + plot_w + notes_w
    height = top + len(summaries) * (band_h + band_gap) + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    title, small, tiny = _font(22), _font(15), _font(13)
    draw.text((16, 14), "Latency per variant (seconds from the chain's start)", font=title, fill=_INK)
    for i, (name, colour) in enumerate((("first token", _FIRST_TOKEN), ("whole meme", _TOTAL))):
        left = 16 + i * 170
        draw.ellipse((left, 56, left + 10, 66), fill=colour)
        draw.text((left + 16, 52), name, font=small, fill=_INK)
    draw.text((360, 52), "| p50   ¦ p95   · one row", font=small, fill=_MUTED)

    values = [r.timings[k] for r in rows for k in ("first_token_s", "total_s") if k in r.timings]
    span = max([*values, 0.001]) * 1.05
    step = _nice_step(span)
    span = math.ceil(span / step) * step

    def x_of(seconds: float) -> float:
        return label_w + plot_w * min(seconds, span) / span

    plot_bottom = height - bottom
    tick = 0.0
    while tick <= span + step / 1000:
        x = x_of(tick)
        draw.line((x, top - 6, x, plot_bottom), fill=_GRID, width=1)
        text = f"{tick:g}"
        draw.text((x - small.getlength(text) / 2, plot_bottom + 8), text, font=small, fill=_MUTED)
        tick += step
    draw.text((label_w + plot_w / 2 - 30, plot_bottom + 30), "seconds", font=small, fill=_MUTED)

    for index, summary in enumerate(summaries):
        y0 = top + index * (band_h + band_gap)
        label_font = _font_for(summary.variant, 15)
        _draw_lines(draw, (16, y0 + 2), _wrap(summary.variant, label_font, label_w - 32, 2), label_font, _INK)
        mine = [r for r in rows if r.variant == summary.variant]
        lanes = (
            ("first_token_s", _FIRST_TOKEN, summary.first_token_p50, summary.first_token_p95),
            ("total_s", _TOTAL, summary.total_p50, summary.total_p95),
        )
        for lane, (key, colour, p50, p95) in enumerate(lanes):
            middle = y0 + lane * lane_h + lane_h / 2
            for n, row in enumerate(r for r in mine if key in r.timings and (key != "total_s" or r.status == "ok")):
                x = x_of(row.timings[key])
                jitter = ((n * 7) % 9 - 4) * 1.2  # spread equal values a little, the same way every time
                draw.ellipse((x - 3, middle + jitter - 3, x + 3, middle + jitter + 3), outline=colour, width=1)
            if p50 is not None:
                draw.line((x_of(p50), middle - 9, x_of(p50), middle + 9), fill=colour, width=4)
            if p95 is not None:
                for y in range(int(middle - 9), int(middle + 9), 4):
                    draw.line((x_of(p95), y, x_of(p95), y + 2), fill=colour, width=2)
            note = f"p50 {_seconds(p50)} · p95 {_seconds(p95)}"
            draw.text((label_w + plot_w + 14, middle - 8), note, font=tiny, fill=colour)
        if summary.errors:
            draw.text((16, y0 + band_h - 4), f"{summary.errors} errors", font=tiny, fill=_ERROR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)


def draw_contact_sheet(
    path: Path,
    rows: Sequence[RowResult],
    topics: Sequence[str],
    variants: Sequence[Variant],
    base_dir: Path,
    *,
    cell: int = 200,
) -> None:
    """contact_sheet.png: a grid of the memes, one row per topic and one column per variant, both labelled."""
    pad, label_w, header_h = 10, 220, 92
    width = label_w + len(variants) * (cell + pad) + pad
    height = header_h + len(topics) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, height), (246, 247, 249))
    draw = ImageDraw.Draw(sheet)
    by_key = {row.key: row for row in rows}
    header = _font(14)
    for column, variant in enumerate(variants):
        x = label_w + pad + column * (cell + pad)
        lines = [variant.text_bot, variant.image_bot, f"prompt {variant.prompt}"]
        _draw_lines(draw, (x, 14), [_wrap(line, header, cell, 1)[0] for line in lines], header, _INK)
    for line_number, topic in enumerate(topics):
        y = header_h + line_number * (cell + pad)
        label_font = _font_for(topic, 16)
        _draw_lines(draw, (pad, y + 4), _wrap(topic, label_font, label_w - 2 * pad, 8), label_font, _INK)
        for column, variant in enumerate(variants):
            x = label_w + pad + column * (cell + pad)
            _draw_cell(sheet, draw, (x, y), cell, by_key.get((topic, variant.label)), base_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)


def _draw_cell(
    sheet: Image.Image, draw: ImageDraw.ImageDraw, xy: tuple[int, int], cell: int, row: RowResult | None, base: Path
) -> None:
    x, y = xy
    picture = base / row.picture if row is not None and row.picture else None
    if row is not None and picture is not None and picture.exists():
        with Image.open(picture) as opened:
            thumb = ImageOps.contain(opened.convert("RGB"), (cell, cell))
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        return
    draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(230, 232, 236), outline=(210, 213, 218))
    font = _font(14)
    if row is None:
        message, colour = ["not made yet"], _MUTED
    elif row.status == "error":
        message = _wrap(f"{row.error_type}: {row.error or ''}", font, cell - 16, 7)
        colour = _ERROR
    else:
        message, colour = ["picture file missing"], _MUTED
    _draw_lines(draw, (x + 8, y + 8), message, font, colour)
