"""Which language the quote should be in: the message text first, Poe's language_code as a hint."""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Final

_LATIN_LANGUAGES: Final = frozenset(
    {
        "en", "es", "fr", "de", "it", "pt", "nl", "sv", "da", "no", "nb", "fi", "pl", "cs", "sk", "sl", "hr",
        "ro", "hu", "tr", "id", "ms", "vi", "tl", "sw", "et", "lv", "lt", "ca", "eu", "gl", "af",
    }
)  # fmt: skip
_SCRIPT_LANGUAGE: Final = {
    "HIRAGANA": "ja",
    "KATAKANA": "ja",
    "HANGUL": "ko",
    "CJK": "zh",
    "CYRILLIC": "ru",
    "ARABIC": "ar",
    "HEBREW": "he",
    "GREEK": "el",
    "THAI": "th",
    "DEVANAGARI": "hi",
}


def _script(ch: str) -> str | None:
    name = unicodedata.name(ch, "")
    for script in _SCRIPT_LANGUAGE:
        if name.startswith(script):
            return script
    return "LATIN" if name.startswith("LATIN") else None


def detect_language(text: str, hint: str | None = None) -> str:
    """A language code for the quote, e.g. "en", "zh", "ja"."""
    scripts = Counter(s for ch in text if (s := _script(ch)))
    hint_code = (hint or "").split("-")[0].lower()
    if scripts["HIRAGANA"] or scripts["KATAKANA"]:
        return "ja"
    non_latin = [(n, s) for s, n in scripts.items() if s != "LATIN"]
    if non_latin and max(non_latin)[0] >= scripts["LATIN"] / 4:
        script = max(non_latin)[1]
        language = _SCRIPT_LANGUAGE[script]
        if script == "CJK" and hint_code in ("zh", "ja"):
            return hint_code
        return language
    if hint_code in _LATIN_LANGUAGES:
        return hint_code
    return "en"
