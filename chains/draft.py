"""The meme draft (picture description + quote) and its tolerant, streaming output parser."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Final

import jiter
import json_repair
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import BaseTransformOutputParser
from langchain_core.outputs import ChatGeneration, Generation
from pydantic import BaseModel, ConfigDict, StringConstraints

from chains.prompts import prompt_text

__all__ = ["FORMAT_INSTRUCTIONS", "MemeDraft", "MemeDraftParser", "PartialMemeDraft"]

_NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

IMAGE_PROMPT_MAX_CHARS: Final = 2000
_SNIPPET_CHARS: Final = 200
# An object this long or deep is not a meme draft; the limits bound the CPU a runaway reply costs.
_SCAN_LIMIT: Final = 20_000
_MAX_DEPTH: Final = 16
_MAX_CANDIDATES: Final = 16

# Passed to the prompt as a variable value: the braces would be template syntax in template text.
FORMAT_INSTRUCTIONS: Final = prompt_text("meme_format.txt").strip()


class MemeDraft(BaseModel):
    """A finished meme draft: what to draw and the quote to put on it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    image_prompt: _NonEmpty
    quote: _NonEmpty


class PartialMemeDraft(BaseModel):
    """A meme draft while it streams: the fields so far and which of them are final."""

    model_config = ConfigDict(frozen=True)

    image_prompt: str | None = None
    quote: str | None = None
    image_prompt_complete: bool = False
    quote_complete: bool = False


# ---------------------------------------------------------------------------------------------------------
# Key names: normalised (casefolded, alphanumerics only) -> (role, priority); lower priority wins.
# ---------------------------------------------------------------------------------------------------------
_IMAGE, _QUOTE, _TOP, _BOTTOM = "image_prompt", "quote", "top", "bottom"
_FIELD_NAMES: Final = {_IMAGE: "image prompt", _QUOTE: "quote"}

_SYNONYMS: Final[dict[str, tuple[str, ...]]] = {
    _IMAGE: (
        "imageprompt", "imagedescription", "image", "imagedesc", "pictureprompt", "picturedescription",
        "picture", "scenedescription", "scene", "visualdescription", "visualprompt", "visual", "prompt",
        "illustration", "description", "图片描述", "图像描述", "画面描述", "图片提示词", "图片提示", "提示词",
        "图片", "图像", "画面", "场景",
    ),
    _QUOTE: (
        "quote", "memequote", "memetext", "memecaption", "caption", "captiontext", "quotetext", "text",
        "meme", "配文", "名言", "文案", "文字", "引言", "语录", "台词",
    ),
    _TOP: ("toptext", "top", "topcaption", "topline", "setup", "上方文字", "上句"),
    _BOTTOM: ("bottomtext", "bottom", "bottomcaption", "bottomline", "punchline", "下方文字", "下句"),
}  # fmt: skip
_KEY_ROLES: Final = {key: (role, prio) for role, keys in _SYNONYMS.items() for prio, key in enumerate(keys)}


@lru_cache(maxsize=512)
def _key_role(key: str) -> tuple[str, int] | None:
    """Map a key or label such as "Image Prompt" or "meme_text" to its role and priority."""
    return _KEY_ROLES.get("".join(ch for ch in key.casefold() if ch.isalnum()))


@dataclass(frozen=True, slots=True)
class _Fields:
    """Raw (uncleaned) field values found in a reply; None means absent."""

    image_prompt: str | None = None
    quote: str | None = None
    # True while only one of a top/bottom caption pair has been seen (the quote may still grow).
    quote_half: bool = False
    # The key each value came from, and whether it is the canonical key holding a plain string: while
    # streaming, a canonical value is final when its string closes, any other once the model moves on.
    image_key: str | None = None
    quote_key: str | None = None
    image_sure: bool = False
    quote_sure: bool = False
    last_key: str | None = None

    @property
    def rank(self) -> tuple[int, int]:
        """Non-blank fields, then present fields: which of two candidates explains a failure better."""
        values = (self.image_prompt, self.quote)
        return sum(1 for v in values if v is not None and v.strip()), sum(1 for v in values if v is not None)


_NO_FIELDS: Final = _Fields()


def _as_text(value: Any, role: str) -> str | None:
    """A field value as text: a string, a list of strings as lines, or the same role inside an object."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if isinstance(value, dict):  # {"caption": {"top": ..., "bottom": ...}}, {"image": {"description": ...}}
        inner = _fields_of(value)
        if role == _IMAGE:
            return inner.image_prompt
        return inner.quote if role == _QUOTE else None
    return None


def _fields_of(mapping: dict[Any, Any]) -> _Fields:
    """The draft fields of one mapping, by the best-ranked key of each role."""
    best: dict[str, tuple[int, str, str]] = {}  # role -> (priority, text, key)
    last_key = None
    for key, value in mapping.items():
        if not isinstance(key, str):
            continue
        last_key = key
        found = _key_role(key)
        text = None if found is None else _as_text(value, found[0])
        if found is not None and text is not None and (found[0] not in best or found[1] < best[found[0]][0]):
            best[found[0]] = (found[1] if isinstance(value, str) else len(_KEY_ROLES), text, key)
    image, image_key = (best[_IMAGE][1], best[_IMAGE][2]) if _IMAGE in best else (None, None)
    image_sure = _IMAGE in best and best[_IMAGE][0] == 0
    if _QUOTE in best:
        prio, quote, quote_key = best[_QUOTE]
        return _Fields(image, quote, False, image_key, quote_key, image_sure, prio == 0, last_key)
    halves = [best[r] for r in (_TOP, _BOTTOM) if r in best]
    if not halves:
        return _Fields(image, None, False, image_key, None, image_sure, False, last_key)
    quote = "\n".join(h[1] for h in halves if h[1].strip())
    return _Fields(image, quote, len(halves) == 1, image_key, halves[-1][2], image_sure, False, last_key)


def _find_fields(data: Any, depth: int = 0) -> _Fields:
    """The best draft inside parsed data: this mapping, a nested one ({"meme": {...}}) or a list item."""
    found = _fields_of(data) if isinstance(data, dict) else _NO_FIELDS
    if (found.image_prompt is not None and found.quote is not None) or depth > 4:
        return found
    children = data.values() if isinstance(data, dict) else data if isinstance(data, list) else ()
    for child in children:
        if isinstance(child, dict | list):
            inner = _find_fields(child, depth + 1)
            if inner.image_prompt is not None and inner.quote is not None:
                return inner
            if found.image_prompt is None and found.quote is None:
                found = inner
    return found


# ---------------------------------------------------------------------------------------------------------
# Cleaning field values.
# ---------------------------------------------------------------------------------------------------------
_WRAPPERS: Final = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』", "«": "»", "„": "“", "`": "`"}
_OPENERS: Final = "".join(_WRAPPERS)


def _unwrap(text: str) -> str:
    """Strip whitespace and matching wrapping quotes that enclose the whole value (and nothing else)."""
    text = text.strip()
    while len(text) >= 2 and (close := _WRAPPERS.get(text[0])) is not None and text[-1] == close:
        inner = text[1:-1]
        if text[0] in inner or close in inner:
            break
        text = inner.strip()
    return text


def _cap_words(text: str, limit: int) -> str:
    """Cut text to at most limit characters, at a word boundary when one is near."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-")


# A value that only echoes the format ("...", "<short quote>") is treated as empty.
_PLACEHOLDER: Final = re.compile(r"(?:\.{2,}|…+|<[^<>\n]{0,80}>)")


def _clean_image_prompt(raw: str, *, complete: bool = True) -> str:
    """One paragraph: unwrapped, whitespace collapsed, capped at IMAGE_PROMPT_MAX_CHARS."""
    text = _unwrap(raw) if complete else raw.strip().lstrip(_OPENERS)
    if complete and _PLACEHOLDER.fullmatch(text):
        return ""
    return _cap_words(" ".join(text.split()), IMAGE_PROMPT_MAX_CHARS)


def _clean_quote(raw: str, *, complete: bool = True) -> str:
    """Unwrapped, spaces collapsed per line, blank lines dropped; the setup/punchline newline is kept."""
    # Models that double-escape write a literal backslash-n; a meme quote never means that.
    text = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\\n", "\n")
    text = _unwrap(text) if complete else text.strip().lstrip(_OPENERS)
    if complete and _PLACEHOLDER.fullmatch(text):
        return ""
    return "\n".join(line for line in (" ".join(part.split()) for part in text.split("\n")) if line)


# ---------------------------------------------------------------------------------------------------------
# Finding a JSON-ish object in free text and normalising it to JSON (json_repair does the rest).
# ---------------------------------------------------------------------------------------------------------
_STRING_CLOSERS: Final = {'"': '"”', "'": "'’", "“": '”“"', "‘": "’‘'", "„": '“”"'}
_VALID_ESCAPES: Final = frozenset('"\\/bfnrtu')


@dataclass(frozen=True, slots=True)
class _Scan:
    """One candidate object: its normalised JSON text and how the source ended."""

    json_text: str
    end: int | None  # index just past the closing brace in the source, None if it never closed
    cut: int | None  # where, in json_text, an unterminated string began (None if none)
    oversized: bool = False  # gave up: longer than _SCAN_LIMIT or deeper than _MAX_DEPTH


# What may follow a comma after a string that really ends: a key or value, a closing bracket, a comment.
_AFTER_COMMA: Final = re.compile(r"\s*(?:[\"'“‘}\]/#]|$|[^\W\d][\w ]{0,40}:)")
# A quoted key, for a string followed by the next key with the comma missing.
_NEXT_KEY: Final = re.compile(r"\s*[\"'“‘][^\"'“”‘’\n]{1,40}[\"'”’]\s*:")


def _closes_string(text: str, j: int, n: int) -> bool:
    """Whether a quote character just before index j ends a string, judged by what follows it."""
    newline = False
    while j < n and text[j] in " \t\r\n":
        newline = newline or text[j] == "\n"
        j += 1
    if j == n:
        return True
    nxt = text[j]
    if nxt == ",":  # "Me: "fine", also me" keeps its inner quotes
        return _AFTER_COMMA.match(text, j + 1) is not None
    return nxt in ":}]/#" or (nxt in _STRING_CLOSERS and (newline or _NEXT_KEY.match(text, j) is not None))


def _scan_object(text: str, start: int) -> _Scan:
    """Read the object at text[start] ('{') to its matching brace, rewriting it as plain JSON.

    Strings may use ', “ ”, ‘ ’ as quotes; a quote only ends a string when JSON punctuation follows, so
    apostrophes and inner quotes stay inside. Comments are dropped; raw newlines in strings are escaped.
    """
    n = min(len(text), start + _SCAN_LIMIT)
    out: list[str] = []
    depth = 0
    closers: str | None = None
    str_open = 0
    last = ""  # last significant character outside strings
    i = start
    while i < n:
        c = text[i]
        if closers is None:
            if c in "{[":
                depth += 1
                if depth > _MAX_DEPTH:
                    return _Scan("", None, None, oversized=True)
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    out.append(c)
                    return _Scan("".join(out), i + 1, None)
            elif c in _STRING_CLOSERS and (c == '"' or last in "{[,:"):
                closers, str_open = _STRING_CLOSERS[c], len(out)
                out.append('"')
                last = '"'
                i += 1
                continue
            elif c == "#" or (c == "/" and text.startswith("//", i)):
                i = text.find("\n", i)
                i = n if i < 0 else i
                continue
            elif c == "/" and text.startswith("/*", i):
                i = text.find("*/", i + 2)
                i = n if i < 0 else i + 2
                continue
            out.append(c)
            if not c.isspace():
                last = c
        elif c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt in _VALID_ESCAPES:
                out.append(c + nxt)
                i += 2
            elif nxt == "'":
                out.append("'")
                i += 2
            else:  # a stray backslash stays a literal backslash
                out.append("\\\\")
                i += 1
            continue
        elif c in closers and _closes_string(text, i + 1, n):
            closers = None
            out.append('"')
        elif c == '"':
            out.append('\\"')
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c >= " ":
            out.append(c)
        i += 1
    if n < len(text):
        return _Scan("", None, None, oversized=True)
    return _Scan("".join(out), None, None if closers is None else str_open)


def _load(json_text: str, *, partial: bool = False) -> Any:
    """Parse normalised JSON: jiter when it is valid, json_repair for what is left (trailing commas, ...)."""
    try:
        return jiter.from_json(json_text.encode(), partial_mode=partial, cache_mode="keys")
    except ValueError:
        pass
    try:
        return json_repair.loads(json_text)
    except Exception:  # its heuristics give up on some inputs (deep nesting, ...): then it is not a draft
        return None


# An object-looking brace ('{' then a quote, a bracket or nothing yet), unlike "{as requested}" in prose.
_OBJECT_START: Final = re.compile(r"\{\s*(?:[\"'“‘{\[]|$)")
_KEY_BEFORE: Final = re.compile(r'(?:"((?:[^"\\]|\\.)*)"|([^\s{},:"]+))\s*:\s*$')


def _cut_field(json_text: str, cut: int) -> str | None:
    """The role of the value whose string was cut off at json_text[cut], if it is a draft field."""
    match = _KEY_BEFORE.search(json_text, max(0, cut - 200), cut)
    found = _key_role(match.group(1) or match.group(2)) if match else None
    if found is None:
        return None
    return _QUOTE if found[0] in (_QUOTE, _TOP, _BOTTOM) else _IMAGE


# ---------------------------------------------------------------------------------------------------------
# Label-style answers: "Quote: ...", "**Image prompt:** ...", "## Quote", "<quote>...</quote>", "配文：...".
# ---------------------------------------------------------------------------------------------------------
_OPEN_TAG: Final = re.compile(r"<\s*([^\s<>/][^<>/]{0,40}?)\s*>")
_LABEL_LINE: Final = re.compile(
    r"^\s*(?:[-*+•>]\s+)*(?:#{1,6}\s*)?(?:\*\*|__)?\s*([^\n:：*#<>{}\[\]\"]{1,40}?)\s*(?:\*\*|__)?\s*[:：]\s*"
    r"(?:\*\*|__)?[ \t]*(.*)$"
)
_HEAD_LINE: Final = re.compile(r"^\s*(?:#{1,6}\s*(.+?)\s*#*|(?:\*\*|__)(.+?)(?:\*\*|__)\s*[:：]?)\s*$")
_FENCE_LINE: Final = re.compile(r"^\s*(?:```|~~~)")
_MARKDOWN_WRAP: Final = re.compile(r"^(\*\*|__|\*|_)(.+)\1$", re.DOTALL)


def _label_role(label: str) -> str | None:
    """The role named by a label, with any trailing colon or markdown removed."""
    found = _key_role(label.strip(" *_:：#"))
    return found[0] if found else None


def _collect(found: dict[str, str]) -> _Fields:
    """Fields from role -> text, joining a top/bottom pair into the quote."""
    quote = found.get(_QUOTE)
    if quote is None and (halves := [found[r] for r in (_TOP, _BOTTOM) if r in found]):
        quote = "\n".join(halves)
    return _Fields(found.get(_IMAGE), quote)


def _strip_markdown(value: str) -> str:
    """Remove emphasis wrapping the whole value (**...**, *...*, __...__)."""
    value = value.strip()
    while (match := _MARKDOWN_WRAP.match(value)) is not None:
        value = match.group(2).strip()
    return value


def _from_tags(text: str) -> _Fields:
    """Fields from XML-like tags such as <quote>...</quote>: the first closed one of each role."""
    found: dict[str, str] = {}
    unclosed: set[str] = set()  # a tag name with no closing tag after one opening has none after later ones
    for match in _OPEN_TAG.finditer(text):
        name = match.group(1)
        role = _label_role(name)
        if role is None or role in found or name.casefold() in unclosed:
            continue
        closing = re.compile(rf"<\s*/\s*{re.escape(name)}\s*>", re.IGNORECASE).search(text, match.end())
        if closing is None:
            unclosed.add(name.casefold())
        else:
            found[role] = text[match.end() : closing.start()]
    return _collect(found)


def _from_labels(text: str) -> _Fields:
    """Fields from labelled lines or headings; a value runs until the next label, heading or blank line."""
    lines: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if _FENCE_LINE.match(line):
            if current:  # a fence closes a value, but may sit between a heading and its value
                current = None
            continue
        label = _LABEL_LINE.match(line)
        role = _label_role(label.group(1)) if label else None
        if label is not None and role is not None:
            current = None
            if role not in lines:
                current = lines[role] = [label.group(2)] if label.group(2).strip() else []
            continue
        head = _HEAD_LINE.match(line)
        if head is not None:
            role = _label_role(head.group(1) or head.group(2))
            if role is not None or head.group(1) is not None:  # any heading ends the value before it
                current = None
                if role is not None and role not in lines:
                    current = lines[role] = []
                continue
        if not line.strip():
            if current:  # a blank line ends a value, but may sit between a heading and its value
                current = None
        elif current is not None:
            current.append(line)
    return _collect({role: _strip_markdown("\n".join(v)) for role, v in lines.items() if v})


# ---------------------------------------------------------------------------------------------------------
# Refusals and errors.
# ---------------------------------------------------------------------------------------------------------
_REFUSAL: Final = re.compile(
    r"\bI(?:['’]m| am) (?:so |very |really )?sorry\b|\bI apologi[sz]e\b|\bsorry, but\b"
    r"|\bI (?:can(?:not|['’]t)|won['’]t|will not|am unable to|['’]m unable to|am not able to|['’]m not able to)"
    r"\b|\bas an AI\b|作为一?个?(?:AI|人工智能|语言模型)|抱歉|对不起|我(?:无法|不能)",
    re.IGNORECASE,
)


def _snippet(text: str) -> str:
    """At most _SNIPPET_CHARS of the reply, for error messages."""
    text = text.strip()
    return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 1] + "…"


def _fail(problem: str, text: str, *, quote_reply: bool = True) -> OutputParserException:
    """An OutputParserException naming the problem and (by default) quoting the start of the reply."""
    message = f"{problem}; the reply was: {_snippet(text)!r}" if quote_reply else problem
    return OutputParserException(message, llm_output=text)


def _missing(fields: _Fields) -> str:
    """What is wrong with fields that do not make a draft."""
    problems = []
    for role, value in ((_IMAGE, fields.image_prompt), (_QUOTE, fields.quote)):
        if value is None:
            problems.append(f"no {_FIELD_NAMES[role]}")
        elif not value.strip():
            problems.append(f"an empty {_FIELD_NAMES[role]}")
    return "the model's reply has " + " and ".join(problems)


def _draft(fields: _Fields) -> MemeDraft | None:
    """The cleaned draft, if both fields survive cleaning non-empty."""
    if fields.image_prompt is None or fields.quote is None:
        return None
    image_prompt = _clean_image_prompt(fields.image_prompt)
    quote = _clean_quote(fields.quote)
    if not image_prompt or not quote:
        return None
    return MemeDraft(image_prompt=image_prompt, quote=quote)


def _cleaned(fields: _Fields) -> _Fields:
    """Fields after cleaning (so a value of only quotes or spaces counts as empty)."""
    return _Fields(
        None if fields.image_prompt is None else _clean_image_prompt(fields.image_prompt),
        None if fields.quote is None else _clean_quote(fields.quote),
    )


def _from_json(source: str, text: str) -> tuple[MemeDraft | None, _Fields, str | None]:
    """The first complete draft among the reply's JSON objects; else the best fields seen and, if an object
    was unusable (cut off, oversized), why. Raises at once for an object cut off after a field began."""
    best = _NO_FIELDS
    pos = 0
    for _ in range(_MAX_CANDIDATES):
        start = source.find("{", pos)
        if start < 0:
            break
        scan = _scan_object(source, start)
        if scan.oversized:
            return None, best, f"the reply's JSON is over {_SCAN_LIMIT} characters long or {_MAX_DEPTH} levels deep"
        if scan.end is not None:
            fields = _find_fields(_load(scan.json_text))
            if (draft := _draft(fields)) is not None:
                return draft, fields, None
            best = max(best, _cleaned(fields), key=lambda f: f.rank)
            pos = scan.end
            continue
        # The object never closed: accepted only if both fields' strings did.
        fields = _find_fields(_load(scan.json_text if scan.cut is None else scan.json_text[: scan.cut], partial=True))
        if (draft := _draft(fields)) is not None:
            return draft, fields, None
        has_field = fields.image_prompt is not None or fields.quote is not None
        cut_role = None if scan.cut is None else _cut_field(scan.json_text, scan.cut)
        problem = None
        if cut_role is not None:
            problem = f"the reply was cut off before the {_FIELD_NAMES[cut_role]} ended"
        elif has_field or _OBJECT_START.match(source, start):
            absent = _IMAGE if fields.image_prompt is None else _QUOTE
            problem = f"the reply was cut off before the {_FIELD_NAMES[absent]} began"
        if problem is not None and has_field:
            raise _fail(problem, text)
        return None, best, problem
    return None, best, None


def parse_draft(text: str) -> MemeDraft:
    """Extract a MemeDraft from whatever a chat model replied, or raise OutputParserException."""
    source = text.replace("\ufeff", "").replace("\u200b", "").replace("\u2060", "")
    if not source.strip():
        raise _fail("the model's reply is empty", text)
    draft, best, json_problem = _from_json(source, text)
    if draft is not None:
        return draft
    head = source[:_SCAN_LIMIT]
    for fields in (_from_tags(head), _from_labels(head)):
        if (draft := _draft(fields)) is not None:
            return draft
        best = max(best, _cleaned(fields), key=lambda f: f.rank)
    if json_problem is not None:
        raise _fail(json_problem, text)
    if best.image_prompt is None and best.quote is None:
        if _REFUSAL.search(source, 0, 400) is not None:
            raise _fail(f"the model refused: {_snippet(source)!r}", text, quote_reply=False)
        expected = '(expected {"image_prompt": ..., "quote": ...})'
        raise _fail(f"the model's reply has no image prompt and no quote {expected}", text)
    raise _fail(_missing(best), text)


# ---------------------------------------------------------------------------------------------------------
# Streaming.
# ---------------------------------------------------------------------------------------------------------


class _DraftStream:
    """Incremental state for one streamed reply: partial drafts from jiter's partial mode, then the draft."""

    __slots__ = ("_broken", "_chunks", "_closed", "_last", "_refusal", "_start", "_text", "_yielded")

    def __init__(self) -> None:
        self._text = ""
        self._chunks: list[str] = []
        self._start = -1  # index of the '{' the draft is read from
        self._closed: MemeDraft | None = None  # set once that object closed with both fields
        self._last: PartialMemeDraft | None = None
        self._yielded = False  # whether the object at _start has produced a partial draft
        self._broken = False  # set when the object stops being strict JSON: the final parse decides
        self._refusal = ""

    @property
    def text(self) -> str:
        """Everything received so far."""
        if self._chunks:
            self._text += "".join(self._chunks)
            self._chunks.clear()
        return self._text

    def feed(self, chunk: str | BaseMessage) -> PartialMemeDraft | None:
        """Take one chunk; return a partial draft only if a field or flag changed."""
        piece = self._chunk_text(chunk)
        if not piece:
            return None
        if self._closed is not None or self._broken:
            # Partial drafts are over; later text (a closing fence, prose) only matters to the final parse.
            self._chunks.append(piece)
            return None
        text = self.text + piece
        self._text = text
        old_len = len(text) - len(piece)
        if self._start >= 0 and old_len - self._start > _SCAN_LIMIT:
            self._broken = True  # re-reading a runaway object on every chunk would cost O(n^2)
            return None
        if self._start < 0:
            self._start = text.find("{", old_len)
            if self._start < 0:
                return None
        partial = self._partial(text, old_len if self._start < old_len else self._start)
        if partial is None or partial == self._last:
            return None
        self._last = partial
        self._yielded = True
        return partial

    def finish(self) -> MemeDraft:
        """The final draft for the whole reply, or OutputParserException."""
        if self._refusal:
            raise _fail(f"the model refused: {_snippet(self._refusal)!r}", self.text, quote_reply=False)
        if self._closed is not None:
            return self._closed
        return parse_draft(self.text)

    def _chunk_text(self, chunk: str | BaseMessage) -> str:
        """The text of a chunk, noting any refusal content block."""
        if isinstance(chunk, str):
            return chunk
        self._refusal += _refusal_blocks(chunk)
        return chunk.text

    def _partial(self, text: str, new_from: int) -> PartialMemeDraft | None:
        """The partial draft for text (new since new_from), reading the object from self._start."""
        entry_start = self._start
        while True:
            raw = text[self._start :].encode()
            state, value = _strict_state(raw)
            if state == "broken":
                # Not JSON from here. A brace in prose ("{as requested}") moves us to the next one; an
                # object that merely isn't strict JSON (single quotes, "He said "no"") is left to the final
                # parse: jiter's partial mode would read "He said " as a whole string.
                if self._yielded or _OBJECT_START.match(text, self._start):
                    self._broken = True
                    return None
                self._start = text.find("{", self._start + 1)
                if self._start < 0:
                    return None
                continue
            if state == "open":
                # "on" keeps only finished strings; trailing-strings adds the one still streaming.
                settled = jiter.from_json(raw, partial_mode=True, cache_mode="keys")
                growing = jiter.from_json(raw, partial_mode="trailing-strings", cache_mode="keys")
                return _partial_draft(_find_fields(settled), _find_fields(growing), _ends_at_quote(text))
            end = len(text)
            if state == "trailing":  # the closing brace arrived with text after it: find it
                end, value = self._close(text, new_from if self._start == entry_start else self._start)
            draft = _draft(_find_fields(value))
            if draft is not None:
                self._closed = draft
                return PartialMemeDraft(
                    image_prompt=draft.image_prompt,
                    quote=draft.quote,
                    image_prompt_complete=True,
                    quote_complete=True,
                )
            # The object closed without a whole draft; the first complete one wins, so read on.
            self._yielded = False
            self._start = text.find("{", end)
            if self._start < 0:
                return None

    def _close(self, text: str, new_from: int) -> tuple[int, Any]:
        """Where the object at _start ends (its '}' is at or after new_from) and its value."""
        brace = text.find("}", new_from)
        while brace >= 0:
            try:
                return brace + 1, jiter.from_json(text[self._start : brace + 1].encode(), cache_mode="keys")
            except ValueError:
                brace = text.find("}", brace + 1)
        return len(text), None


def _strict_state(raw: bytes) -> tuple[str, Any]:
    """Whether raw is a JSON object so far ("open"), whole ("closed", with its value), whole with text after
    it ("trailing") or not JSON ("broken"), judged by strict jiter's error."""
    try:
        return "closed", jiter.from_json(raw, cache_mode="keys")
    except ValueError as exc:
        message = str(exc)
    if message.startswith("EOF while parsing"):
        return "open", None
    return ("trailing" if message.startswith("trailing characters") else "broken"), None


def _refusal_blocks(message: BaseMessage) -> str:
    """The text of any refusal content blocks in a message (providers that report refusals that way)."""
    if not isinstance(message.content, list):
        return ""
    return "".join(
        str(block.get("refusal") or "refused")
        for block in message.content
        if isinstance(block, dict) and block.get("type") == "refusal"
    )


def _ends_at_quote(text: str) -> bool:
    """Whether the text ends with the closing quote of an object's value (nothing after it yet)."""
    end = len(text.rstrip()) - 1
    if end < 1 or text[end] != '"':
        return False
    opening = end - 1
    while (opening := text.rfind('"', 0, opening + 1)) > 0:
        before = opening
        while before > 0 and text[before - 1] == "\\":
            before -= 1
        if (opening - before) % 2 == 0:  # not an escaped quote
            break
        opening -= 1
    # A value's string follows ':'; a key's follows '{' or ',' and means the model went on already.
    return opening > 0 and text[:opening].rstrip().endswith(":")


def _partial_draft(settled: _Fields, growing: _Fields, ends_at_quote: bool) -> PartialMemeDraft | None:
    """A partial draft from the finished fields and the ones still growing; None if there is nothing yet.

    A field is final when its string closed and the model went on: a ',' or '}' arrived after the closing
    quote (so "He said "no"" is not taken as "He said "), or, for a key that a better-named one could still
    override, the next key began.
    """

    def done(key: str | None, sure: bool) -> bool:
        if sure and not (ends_at_quote and key == settled.last_key):
            return True
        return key != growing.last_key

    image_done = settled.image_prompt is not None and settled.image_key == growing.image_key
    image_done = image_done and done(settled.image_key, settled.image_sure)
    quote_done = settled.quote is not None and not settled.quote_half and settled.quote_key == growing.quote_key
    quote_done = quote_done and done(settled.quote_key, settled.quote_sure)
    image = settled.image_prompt if image_done else growing.image_prompt
    quote = settled.quote if quote_done else growing.quote
    image_prompt = None if image is None else _clean_image_prompt(image, complete=image_done) or None
    quote_text = None if quote is None else _clean_quote(quote, complete=quote_done) or None
    if image_prompt is None and quote_text is None:
        return None
    return PartialMemeDraft(
        image_prompt=image_prompt,
        quote=quote_text,
        image_prompt_complete=image_done and image_prompt is not None,
        quote_complete=quote_done and quote_text is not None,
    )


class MemeDraftParser(BaseTransformOutputParser[MemeDraft | PartialMemeDraft]):
    """Parse a chat model's meme reply into a MemeDraft, tolerantly; when streaming, yield partial drafts.

    `parse` / `invoke` return a `MemeDraft` or raise `OutputParserException`. Accepted: a JSON object
    (fenced or amid prose; comments, trailing commas, single or curly quotes; synonym keys; nested; the
    first complete one of several) or labelled lines, headings or tags. A reply cut off after both fields'
    strings closed is accepted; one cut off inside or before a field is not. Refusal wording counts only
    when no field was found, so a joke quote like "I'm sorry, Dave" stays a quote.

    Streaming (`transform`, `astream`) yields a `PartialMemeDraft` whenever a field grows or finishes, and
    ends with the final `MemeDraft` (or raises). `image_prompt_complete` turns true once the image prompt's
    closing quote and the ',' or '}' after it have arrived. Partial drafts come from strict JSON only;
    other shapes get just the final draft.
    """

    @property
    def _type(self) -> str:
        return "meme_draft"

    def get_format_instructions(self) -> str:
        """How the model must answer: only a JSON object with image_prompt first, then quote."""
        return FORMAT_INSTRUCTIONS

    def parse(self, text: str) -> MemeDraft:
        """Extract the draft from a whole reply or raise OutputParserException."""
        return parse_draft(text)

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> MemeDraft | PartialMemeDraft:
        """Parse the first generation; with partial=True return what is known so far (never raises)."""
        generation = result[0]
        if partial:
            return _DraftStream().feed(generation.text) or PartialMemeDraft()
        if isinstance(generation, ChatGeneration) and (refusal := _refusal_blocks(generation.message)):
            raise _fail(f"the model refused: {_snippet(refusal)!r}", generation.text, quote_reply=False)
        return self.parse(generation.text)

    def _transform(self, input: Iterator[str | BaseMessage]) -> Iterator[MemeDraft | PartialMemeDraft]:
        stream = _DraftStream()
        for chunk in input:
            if (partial := stream.feed(chunk)) is not None:
                yield partial
        yield stream.finish()

    async def _atransform(self, input: AsyncIterator[str | BaseMessage]) -> AsyncIterator[MemeDraft | PartialMemeDraft]:
        # Parsing a chunk takes microseconds, so it runs inline rather than in an executor thread.
        stream = _DraftStream()
        async for chunk in input:
            if (partial := stream.feed(chunk)) is not None:
                yield partial
        yield stream.finish()
