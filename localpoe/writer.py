"""The offline meme writer: reads our prompt's tags and fills deterministic, topic-aware templates.

It is a stand-in with no model behind it: it never claims otherwise, and its picture descriptions say only
what a painter should draw.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field

_TAG_RE = {
    tag: re.compile(rf"<{tag}>\s*(.*?)\s*</{tag}>", re.DOTALL)
    for tag in ("topic", "language", "instruction", "previous_draft")
}
_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_RE = re.compile(r"[\u3040-\u30ff]")
_TOKEN_RE = re.compile(
    r" ?[A-Za-z0-9']{1,6}"  # a short word or the start of a long one, with its leading space
    r"| ?[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{1,2}"  # one or two CJK characters
    r"| ?[^\sA-Za-z0-9']{1,3}"  # punctuation, JSON syntax, escapes
    r"|\s+"
)

MOODS = ("dark", "wholesome", "absurd")

# {t}: the topic as written; {T}: the same with a capital first letter.
_QUOTES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "plain": (
            "Me: I'll spend five minutes on {t}\nThe clock: it is now next Tuesday",
            "Nobody:\nAbsolutely nobody:\n{T}: hold my coffee",
            "They said {t} would be easy.\nThey lied.",
            "When {t} works on the first try\nand you don't trust it one bit",
            "My therapist: {t} can't hurt you.\n{T}:",
            "I'm not obsessed with {t}. I can stop any time. I just don't want to.",
            "{T}: exists\nMy wallet: and I took that personally",
            "Day 1 of {t}: confident.\nDay 2: who approved this?",
            "Explaining {t} to my parents vs. explaining it to my cat:\nsame result",
            "Keep calm and blame it on {t}.",
            "POV: you just discovered {t} at 2 a.m.",
            "{T} walked so my excuses could run.",
            "Me, an intellectual: I understand {t}.\nAlso me: nods confidently",
            "Plot twist: {t} was the friends we made along the way.",
        ),
        "dark": (
            "{T} didn't ruin my life.\nIt just made the process more efficient.",
            "Every morning I wake up and choose {t}.\nEvery morning it chooses violence.",
            "I asked {t} for a sign.\nIt sent an invoice.",
            "{T}: the reason my plants, my plans and I are all wilting.",
        ),
        "wholesome": (
            "{T} won't fix everything\nbut it's a very good start",
            "Shout-out to {t} for being the best part of my day.",
            "You + {t} = a perfectly fine Tuesday. And that's enough.",
            "Be the {t} you wish to see in the world.",
        ),
        "absurd": (
            "Scientists confirm: {t} is 80% vibes and 20% a raccoon in a trench coat.",
            "I tried to explain {t} to a pigeon.\nThe pigeon now runs a start-up.",
            "{T}, but make it a medieval tax dispute.",
            "Breaking: local duck elected mayor after promising more {t}.",
        ),
    },
    "zh": {
        "plain": (
            "别人：{t}有什么难的？\n我：已经哭了三次了",
            "关于{t}，我只有一句话：\n明天再说",
            "说好只研究五分钟{t}\n一抬头天亮了",
            "{t}：我很简单\n我：你礼貌吗？",
            "打工人的快乐，一半来自{t}，另一半来自下班",
            "我和{t}的关系：\n相爱相杀，主要是杀",
            "今天也是被{t}安排得明明白白的一天",
            "听说{t}能让人快乐\n我试了，我快乐了，钱包哭了",
            "{t}？我熟！\n（其实一点也不熟）",
            "人生三大错觉：我能搞定{t}、我能早睡、我能省钱",
        ),
        "dark": (
            "{t}没有击垮我\n它只是教会了我躺平",
            "每天醒来第一件事：想起{t}\n第二件事：想继续睡",
        ),
        "wholesome": (
            "谢谢{t}，让平凡的一天闪闪发光",
            "有{t}的日子，连周一都变可爱了",
        ),
        "absurd": (
            "专家称：{t}的本质是一只穿西装的鸭子",
            "我把{t}讲给鸽子听\n现在鸽子开了家公司",
        ),
    },
    "ja": {
        "plain": (
            "{t}？五分だけのつもりだった\n気づいたら朝だった",
            "誰も：\n{t}：「ちょっと待って」",
            "{t}を甘く見ていた時期が私にもありました",
            "今日も{t}に振り回される一日",
            "{t}は悪くない。\n悪いのは私の計画性。",
        ),
        "dark": ("{t}に希望を託した\n結果：請求書が届いた",),
        "wholesome": ("{t}があるだけで、今日はちょっといい日",),
        "absurd": ("専門家によると、{t}の正体はスーツを着たアヒルらしい",),
    },
}

_PHOTO_QUOTES: dict[str, tuple[str, ...]] = {
    "en": (
        "This photo ({p}) has main character energy.",
        "Me posting {p}:\nMy group chat: we need to talk",
        "Nobody:\n{p}: absolutely iconic",
        "When you open {p}\nand realise it's your best photo of the year",
    ),
    "zh": (
        "这张照片（{p}）：主角光环拉满",
        "我：随手拍了张{p}\n朋友圈：这是大片吧？",
        "打开{p}的那一刻\n我承认我有被自己可爱到",
    ),
    "ja": ("この写真（{p}）、主人公感がすごい",),
}

_SUBJECTS = (
    "a cat wearing tiny glasses, staring in disbelief at {t}",
    "a tired office worker buried under a mountain of {t}",
    "a dramatic standoff between a corgi and {t}",
    "a golden retriever proudly presenting {t} like a trophy",
    "a raccoon in a trench coat secretly selling {t} from a suitcase",
    "a pigeon giving a very serious presentation about {t}",
    "an astronaut floating past {t} with a puzzled expression",
    "a grandmother calmly reading a newspaper while {t} causes chaos behind her",
)
_SCENES = (
    "in a cosy kitchen at night",
    "on a sunny city street",
    "in a cluttered home office",
    "on a mountain top at sunrise",
    "in a busy train station",
    "in a tiny flat full of houseplants",
)
STYLES = (
    "bright cartoon illustration",
    "cinematic photograph",
    "soft watercolor painting",
    "3D clay render",
    "pixel art scene",
    "retro comic panel",
    "flat vector illustration",
)
_MOOD_WORDS = {
    "plain": "playful expressions, clear composition",
    "dark": "darker mood, moody low-key lighting, deep shadows",
    "wholesome": "wholesome mood, warm soft light, friendly faces",
    "absurd": "more absurd, surreal details, exaggerated proportions",
}
_PICTURE = "A {style} of {subject}, {scene}; {mood}; no text or lettering in the picture."
_PHOTO_PICTURE = (
    "A {style} inspired by the uploaded photo '{p}' (the offline writer cannot see it), "
    "recast as a meme scene {scene}; {mood}; no text or lettering in the picture."
)

_LANGUAGE_ALIASES = {
    "en": "en",
    "english": "en",
    "zh": "zh",
    "chinese": "zh",
    "中文": "zh",
    "ja": "ja",
    "japanese": "ja",
    "日本語": "ja",
}


@dataclass(frozen=True)
class WriterInput:
    """What the writer understood from the last user message."""

    topic: str
    language: str
    instruction: str = ""
    previous: dict[str, str] = field(default_factory=dict)
    photo_names: tuple[str, ...] = ()


def _tag(name: str, text: str) -> str | None:
    match = _TAG_RE[name].search(text)
    return match.group(1) if match else None


def normalize_language(code: str) -> str | None:
    """Map 'zh-CN', 'Chinese', 'ja', ... to one of the writer's languages ('en', 'zh', 'ja'), else None."""
    lowered = code.strip().lower()
    if lowered in _LANGUAGE_ALIASES:
        return _LANGUAGE_ALIASES[lowered]
    return _LANGUAGE_ALIASES.get(re.split(r"[-_]", lowered, maxsplit=1)[0])


def detect_language(text: str) -> str:
    """'ja' when there is kana, 'zh' when there are other CJK characters, else 'en'."""
    if _KANA_RE.search(text):
        return "ja"
    return "zh" if _CJK_RE.search(text) else "en"


def parse_message(text: str, photo_names: tuple[str, ...] = ()) -> WriterInput:
    """Read topic, language, instruction and previous draft from our prompt (or treat the text as the topic)."""
    topic = _tag("topic", text)
    if topic is None:
        # Not our prompt: the whole message, minus any tags we do understand, is the topic.
        topic = re.sub(r"<(language|instruction|previous_draft)>.*?</\1>", " ", text, flags=re.DOTALL)
    topic = " ".join(topic.split())
    previous: dict[str, str] = {}
    raw_previous = _tag("previous_draft", text)
    if raw_previous:
        try:
            loaded = json.loads(raw_previous)
        except json.JSONDecodeError:
            loaded = None
        if isinstance(loaded, dict):
            previous = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)}
    instruction = " ".join((_tag("instruction", text) or "").split())
    asked = _tag("language", text)
    language = (normalize_language(asked) if asked else None) or detect_language(topic)
    return WriterInput(topic, language, instruction, previous, photo_names)


def _short(topic: str, limit: int = 80) -> str:
    if len(topic) <= limit:
        return topic
    cut = topic[:limit].rsplit(" ", 1)[0] if " " in topic[:limit] else topic[:limit]
    return cut.rstrip(" ,.;:") + "…"


def _fill(template: str, topic: str) -> str:
    return template.replace("{t}", topic).replace("{T}", topic[:1].upper() + topic[1:])


def _pick(rng: random.Random, options: tuple[str, ...], avoid: str | None = None) -> str:
    choice = rng.choice(options)
    if avoid is not None and choice == avoid and len(options) > 1:
        # A refinement must change something: take the next option instead of the same one.
        choice = options[(options.index(choice) + 1) % len(options)]
    return choice


def _instruction_language(instruction: str) -> str | None:
    lowered = instruction.lower()
    for words, language in (
        (("in chinese", "chinese", "中文"), "zh"),
        (("in japanese", "japanese", "日本語"), "ja"),
        (("in english", "english"), "en"),
    ):
        if any(word in lowered for word in words):
            return language
    return None


def _instruction_mood(instruction: str) -> str:
    lowered = instruction.lower()
    for words, mood in (
        (("dark", "grim", "黑暗"), "dark"),
        (("wholesome", "cute", "kind", "温馨", "可爱"), "wholesome"),
        (("absurd", "weird", "surreal", "crazy", "离谱"), "absurd"),
    ):
        if any(word in lowered for word in words):
            return mood
    return "plain"


def write_meme(inp: WriterInput, bot_name: str) -> dict[str, str]:
    """A meme draft {"image_prompt": ..., "quote": ...}, deterministic for (input, bot name)."""
    instruction = inp.instruction.lower()
    language = _instruction_language(inp.instruction) or inp.language
    mood = _instruction_mood(inp.instruction)
    seed_text = f"{bot_name.lower()}|{inp.topic}|{inp.instruction}|{language}|{','.join(inp.photo_names)}"
    rng = random.Random(hashlib.sha256(seed_text.encode()).digest())
    # Trailing punctuation would clash with the templates' own ("taxes?." / "taxes?:").
    topic = _short(inp.topic).rstrip(" ?!.,;:。？！，；：") or "this"
    prev_quote, prev_picture = inp.previous.get("quote"), inp.previous.get("image_prompt")

    if prev_quote is not None and any(k in instruction for k in ("keep the quote", "keep quote", "same quote")):
        quote = prev_quote
    elif inp.photo_names:
        photo = _short(inp.photo_names[0], 40)
        quote = _pick(rng, _PHOTO_QUOTES.get(language, _PHOTO_QUOTES["en"])).replace("{p}", photo)
    else:
        pools = _QUOTES.get(language, _QUOTES["en"])
        pool = pools["plain"] + pools[mood] if mood == "plain" else pools[mood]
        quote = _fill(_pick(rng, pool), topic)
        if quote == prev_quote:
            quote = _fill(_pick(rng, pool, avoid=next(t for t in pool if _fill(t, topic) == quote)), topic)

    keep_picture = ("keep the picture", "keep picture", "keep the image", "same picture", "same image")
    if prev_picture is not None and any(k in instruction for k in keep_picture):
        image_prompt = prev_picture
    else:
        avoid_style = next((s for s in STYLES if prev_picture and s in prev_picture), None)
        style = _pick(rng, STYLES, avoid=avoid_style)
        scene, mood_words = rng.choice(_SCENES), _MOOD_WORDS[mood]
        if inp.photo_names:
            image_prompt = _PHOTO_PICTURE.format(
                style=style, p=_short(inp.photo_names[0], 40), scene=scene, mood=mood_words
            )
        else:
            subject = rng.choice(_SUBJECTS).replace("{t}", topic)
            image_prompt = _PICTURE.format(style=style, subject=subject, scene=scene, mood=mood_words)
        image_prompt = image_prompt[:1].upper() + image_prompt[1:]
    return {"image_prompt": image_prompt, "quote": quote}


def draft_json(draft: dict[str, str]) -> str:
    """The draft as the JSON text a text bot would write, image_prompt first."""
    return json.dumps({"image_prompt": draft["image_prompt"], "quote": draft["quote"]}, ensure_ascii=False)


def token_chunks(text: str) -> list[str]:
    """Split text into token-sized pieces (a short word, one or two CJK characters, a bit of punctuation)."""
    chunks = _TOKEN_RE.findall(text)
    if "".join(chunks) != text:  # cannot happen with the pattern above; keep the output lossless anyway
        return [text]
    return chunks


def garbage_text(topic: str) -> str:
    """A chatty answer with no JSON in it: what a bot that ignored the format would send."""
    short = _short(topic, 40) or "that"
    return (
        f"Sure! Here is a funny idea about {short}: picture a cat looking very confused at it. "
        "Hope this helps, let me know if you'd like another one!"
    )
