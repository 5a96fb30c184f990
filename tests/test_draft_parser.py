"""Behaviour of MemeDraft and MemeDraftParser: tolerant parsing, clear errors, and streaming partial drafts."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableLambda
from pydantic import ValidationError

from chains.draft import MemeDraft, MemeDraftParser, PartialMemeDraft

Item = MemeDraft | PartialMemeDraft
CAT = "A grumpy cat on a laptop"
HI = "When the meeting\ncould have been an email"

# (id, model reply, expected image_prompt, expected quote)
Case = tuple[str, str, str, str]

FENCES: list[Case] = [
    ("json-fence", '```json\n{"image_prompt": "A cat", "quote": "Hi"}\n```', "A cat", "Hi"),
    ("bare-fence", '```\n{"image_prompt": "A cat", "quote": "Hi"}\n```', "A cat", "Hi"),
    ("tilde-fence", '~~~json\n{"image_prompt": "A cat", "quote": "Hi"}\n~~~', "A cat", "Hi"),
    ("fence-no-newline", '```json {"image_prompt": "A dog", "quote": "Woof"} ```', "A dog", "Woof"),
]
PROSE: list[Case] = [
    (
        "before-and-after",
        'Sure! Here is your meme:\n{"image_prompt": "A cat", "quote": "Hi"}\nHope you like it!',
        "A cat",
        "Hi",
    ),
    (
        "fence-with-prose",
        'Here you go:\n\n```json\n{"image_prompt": "A cat", "quote": "Hi"}\n```\n\nLet me know if you want changes.',
        "A cat",
        "Hi",
    ),
    (
        "brace-in-prose",
        'Here it is {as requested}: {"image_prompt": "A cat", "quote": "Hi"} Enjoy :)',
        "A cat",
        "Hi",
    ),
    (
        "apostrophes-in-prose",
        'I\'ve made one! It\'s about Mondays: {"image_prompt": "A sad owl", "quote": "Monday again?"} That\'s it.',
        "A sad owl",
        "Monday again?",
    ),
]
TRAILING_COMMAS: list[Case] = [
    ("object", '{"image_prompt": "A cat", "quote": "Hi",}', "A cat", "Hi"),
    ("object-newline", '{\n  "image_prompt": "A cat",\n  "quote": "Hi",\n}\n', "A cat", "Hi"),
    ("list", '[{"image_prompt": "A cat", "quote": "Hi",},]', "A cat", "Hi"),
]
SINGLE_QUOTES: list[Case] = [
    ("all-single", "{'image_prompt': 'A cat', 'quote': 'Hi'}", "A cat", "Hi"),
    (
        "apostrophe-inside",
        "{'image_prompt': 'A cat's dream', 'quote': 'I don't know'}",
        "A cat's dream",
        "I don't know",
    ),
    ("mixed", "{'image_prompt': \"A cat\", \"quote\": 'Hi there'}", "A cat", "Hi there"),
    ("escaped", "{'image_prompt': 'A cat', 'quote': 'It\\'s Monday'}", "A cat", "It's Monday"),
]
SMART_QUOTES: list[Case] = [
    ("double", "{“image_prompt”: “A cat”, “quote”: “Hi”}", "A cat", "Hi"),
    ("single", "{‘image_prompt’: ‘A cat’, ‘quote’: ‘I’m fine’}", "A cat", "I’m fine"),
    ("inner-quotes-kept", "{“image_prompt”: “A cat”, “quote”: “He said “no” to me”}", "A cat", "He said “no” to me"),
    ("mixed-straight", '{"image_prompt": “A cat”, "quote": “Hi”}', "A cat", "Hi"),
]
COMMENTS: list[Case] = [
    ("line", '{\n  "image_prompt": "A cat", // the picture\n  "quote": "Hi" // the caption\n}', "A cat", "Hi"),
    ("block", '{/* draft */ "image_prompt": "A cat", /* and */ "quote": "Hi"}', "A cat", "Hi"),
    ("hash", '{\n  # picture first\n  "image_prompt": "A cat",\n  "quote": "Hi"\n}', "A cat", "Hi"),
    (
        "url-in-string",
        '{"image_prompt": "A cat, style of http://x.y", "quote": "Hi"}',
        "A cat, style of http://x.y",
        "Hi",
    ),
]
RAW_NEWLINES: list[Case] = [
    ("quote", '{"image_prompt": "A cat", "quote": "When the meeting\ncould have been an email"}', "A cat", HI),
    ("image-prompt", '{"image_prompt": "A cat\non a\n  laptop", "quote": "Hi"}', CAT.replace("grumpy ", ""), "Hi"),
    ("crlf-and-blank", '{"image_prompt": "A cat", "quote": "Setup\r\n\r\nPunchline"}', "A cat", "Setup\nPunchline"),
    ("double-escaped", '{"image_prompt": "A cat", "quote": "Setup\\\\nPunchline"}', "A cat", "Setup\nPunchline"),
]
KEY_VARIANTS: list[Case] = [
    ("caption", '{"image_prompt": "A cat", "caption": "Hi"}', "A cat", "Hi"),
    ("text", '{"image_prompt": "A cat", "text": "Hi"}', "A cat", "Hi"),
    ("meme", '{"image_prompt": "A cat", "meme": "Hi"}', "A cat", "Hi"),
    ("meme_quote", '{"image_prompt": "A cat", "meme_quote": "Hi"}', "A cat", "Hi"),
    ("meme_text", '{"image_prompt": "A cat", "meme_text": "Hi"}', "A cat", "Hi"),
    (
        "top-bottom",
        '{"image_prompt": "A cat", "top_text": "Setup", "bottom_text": "Punchline"}',
        "A cat",
        "Setup\nPunchline",
    ),
    ("image description", '{"image description": "A cat", "quote": "Hi"}', "A cat", "Hi"),
    ("image_description", '{"image_description": "A cat", "quote": "Hi"}', "A cat", "Hi"),
    ("imageDescription", '{"imageDescription": "A cat", "quote": "Hi"}', "A cat", "Hi"),
    ("imagePrompt", '{"imagePrompt": "A cat", "quote": "Hi"}', "A cat", "Hi"),
    ("picture", '{"picture": "A cat", "quote": "Hi"}', "A cat", "Hi"),
    ("scene", '{"scene": "A cat", "quote": "Hi"}', "A cat", "Hi"),
    ("prompt", '{"prompt": "A cat", "quote": "Hi"}', "A cat", "Hi"),
    ("visual", '{"visual": "A cat", "quote": "Hi"}', "A cat", "Hi"),
    ("Title Case", '{"Image Prompt": "A cat", "Meme Quote": "Hi"}', "A cat", "Hi"),
    ("UPPER", '{"IMAGE_PROMPT": "A cat", "QUOTE": "Hi"}', "A cat", "Hi"),
    ("chinese", '{"图片描述": "一只猫", "配文": "今天也不想上班"}', "一只猫", "今天也不想上班"),
    ("quote-beats-caption", '{"image_prompt": "A cat", "caption": "No", "quote": "Yes"}', "A cat", "Yes"),
    ("quote-as-list", '{"image_prompt": "A cat", "quote": ["Setup", "Punchline"]}', "A cat", "Setup\nPunchline"),
]
NESTED: list[Case] = [
    ("meme", '{"meme": {"image_prompt": "A cat", "quote": "Hi"}}', "A cat", "Hi"),
    ("result", '{"result": {"picture": "A cat", "caption": "Hi"}}', "A cat", "Hi"),
    ("list-of-one", '[{"image_prompt": "A cat", "quote": "Hi"}]', "A cat", "Hi"),
    ("deeper", '{"response": {"memes": [{"scene": "A cat", "text": "Hi"}]}}', "A cat", "Hi"),
    (
        "caption-object",
        '{"image": "A cat", "caption": {"top": "Setup", "bottom": "Punchline"}}',
        "A cat",
        "Setup\nPunchline",
    ),
    ("image-object", '{"image": {"description": "A cat", "style": "photo"}, "quote": "Hi"}', "A cat", "Hi"),
]
BROKEN_JSON: list[Case] = [
    (
        "unescaped-inner-quotes",
        '{"image_prompt": "A cat", "quote": "He said "no" to me"}',
        "A cat",
        'He said "no" to me',
    ),
    (
        "unescaped-quotes-comma",
        '{"image_prompt": "A cat", "quote": "Me: "fine", also me"}',
        "A cat",
        'Me: "fine", also me',
    ),
    ("missing-comma", '{"image_prompt": "A cat" "quote": "Hi"}', "A cat", "Hi"),
    ("missing-comma-newline", '{"image_prompt": "A cat"\n"quote": "Hi"\n"mood": "smug"}', "A cat", "Hi"),
    ("unquoted-keys", '{\n  image_prompt: "A cat",\n  quote: "Hi",\n}', "A cat", "Hi"),
    ("python-literals", "{'image_prompt': 'A cat', 'quote': 'Hi', 'nsfw': False, 'seed': None}", "A cat", "Hi"),
    ("double-encoded", '"{\\"image_prompt\\": \\"A cat\\", \\"quote\\": \\"Hi\\"}"', "A cat", "Hi"),
    ("doubled-braces", '{{"image_prompt": "A cat", "quote": "Hi"}}', "A cat", "Hi"),
    (
        "braces-in-values",
        '{"image_prompt": "A cat {sleeping}", "quote": "100% {real}"}',
        "A cat {sleeping}",
        "100% {real}",
    ),
]
LABELS: list[Case] = [
    ("plain", "Image prompt: A cat on a laptop\nQuote: Hi", "A cat on a laptop", "Hi"),
    ("plain-quote-first", "Quote: Hi there\n\nImage description: A cat", "A cat", "Hi there"),
    ("bold-inside", '**Image prompt:** A cat\n\n**Quote:** "Hi"\n\nHope you like it!', "A cat", "Hi"),
    ("bold-outside", "- **Image Prompt**: A cat\n- **Meme Quote**: Hi", "A cat", "Hi"),
    (
        "headings",
        "## Image prompt\nA cat\non a laptop\n\n## Quote\nWhen the meeting\ncould have been an email\n",
        "A cat on a laptop",
        HI,
    ),
    ("bold-headings", "**Image prompt**\nA cat\n\n**Caption**\nHi", "A cat", "Hi"),
    ("xml-tags", "<image_prompt>A cat</image_prompt>\n<quote>Hi</quote>", "A cat", "Hi"),
    (
        "xml-tags-prose",
        "Sure.\n<picture>\nA cat\n</picture>\n<Caption>Setup\nPunchline</Caption>",
        "A cat",
        "Setup\nPunchline",
    ),
    ("chinese-peiwen", "图片描述：一只猫坐在沙发上\n配文：今天也不想上班", "一只猫坐在沙发上", "今天也不想上班"),
    ("chinese-mingyan", "名言：“天下没有免费的午餐”\n图片描述：一只猫盯着空碗", "一只猫盯着空碗", "天下没有免费的午餐"),
    ("chinese-wenan", "**图片描述：** 一只猫\n**文案：** 周一又来了", "一只猫", "周一又来了"),
    ("fenced-labels", "```\nImage prompt: A cat\nQuote: Hi\n```", "A cat", "Hi"),
    (
        "dialogue-quote",
        "Image prompt: A cat\nQuote:\nMe: I'll sleep early\nAlso me at 3am: one more video",
        "A cat",
        "Me: I'll sleep early\nAlso me at 3am: one more video",
    ),
]
SEVERAL_OBJECTS: list[Case] = [
    (
        "two-fences",
        'Option 1:\n```json\n{"image_prompt": "A", "quote": "a"}\n```\n'
        'Option 2:\n```json\n{"image_prompt": "B", "quote": "b"}\n```',
        "A",
        "a",
    ),
    ("adjacent", '{"image_prompt": "A", "quote": "a"}{"image_prompt": "B", "quote": "b"}', "A", "a"),
    ("first-incomplete", '{"image_prompt": "A"}\n{"image_prompt": "B", "quote": "b"}', "B", "b"),
    (
        "format-echoed-first",
        'Format: {"image_prompt": "<picture>", "quote": "..."}\nMine: {"image_prompt": "C", "quote": "c"}',
        "C",
        "c",
    ),
    ("first-not-a-draft", '{"note": "draft follows"} {"image_prompt": "C", "quote": "c"}', "C", "c"),
]
CLEANUP: list[Case] = [
    ("wrapping-quotes", '{"image_prompt": "  \'A cat\'  ", "quote": "\\"Hi\\""}', "A cat", "Hi"),
    (
        "spaces-collapsed",
        '{"image_prompt": "A   cat \\n\\t on  a laptop", "quote": "Hi   there"}',
        "A cat on a laptop",
        "Hi there",
    ),
    (
        "unbalanced-inner-quotes-kept",
        '{"image_prompt": "A cat", "quote": "\\"Yes\\" means \\"no\\""}',
        "A cat",
        '"Yes" means "no"',
    ),
    ("cjk-brackets", '{"image_prompt": "一只猫", "quote": "「周一又来了」"}', "一只猫", "周一又来了"),
    ("truncated-but-both-closed", '{"image_prompt": "A cat", "quote": "Hi"', "A cat", "Hi"),
    ("truncated-third-field", '{"image_prompt": "A cat", "quote": "Hi", "notes": "this was cut o', "A cat", "Hi"),
]

CORPUS: dict[str, list[Case]] = {
    "fence": FENCES,
    "prose": PROSE,
    "trailing-comma": TRAILING_COMMAS,
    "single-quotes": SINGLE_QUOTES,
    "smart-quotes": SMART_QUOTES,
    "comments": COMMENTS,
    "raw-newlines": RAW_NEWLINES,
    "keys": KEY_VARIANTS,
    "nested": NESTED,
    "broken-json": BROKEN_JSON,
    "labels": LABELS,
    "several": SEVERAL_OBJECTS,
    "cleanup": CLEANUP,
}
ALL_CASES = [
    pytest.param(text, image, quote, id=f"{group}:{name}")
    for group, cases in CORPUS.items()
    for name, text, image, quote in cases
]


@pytest.mark.parametrize(("text", "image_prompt", "quote"), ALL_CASES)
def test_parse_accepts_what_chat_models_emit(text: str, image_prompt: str, quote: str) -> None:
    assert MemeDraftParser().parse(text) == MemeDraft(image_prompt=image_prompt, quote=quote)


def test_every_corpus_class_has_at_least_three_cases() -> None:
    assert all(len(cases) >= 3 for cases in CORPUS.values())


# (id, reply, words the message must contain)
ERRORS: list[tuple[str, str, str]] = [
    ("empty", "", "empty"),
    ("whitespace", "  \n\t ", "empty"),
    ("empty-fence", "```json\n```", "no image prompt and no quote"),
    ("refusal-sorry", "I'm sorry, but I can't help with that.", "the model refused"),
    ("refusal-cannot", "I cannot create memes that mock real people.", "the model refused"),
    ("refusal-as-ai", "As an AI language model, I won't write that.", "the model refused"),
    ("refusal-zh-ai", "作为一个AI，我不能生成这类内容。", "the model refused"),
    ("refusal-zh-sorry", "抱歉，我无法完成这个请求。", "the model refused"),
    ("cut-in-quote", '{"image_prompt": "A cat", "quote": "When the meet', "cut off before the quote ended"),
    ("cut-in-quote-fenced", '```json\n{"image_prompt": "A cat",\n "quote": "Hi', "cut off before the quote ended"),
    ("cut-before-quote", '{"image_prompt": "A cat", "quo', "cut off before the quote began"),
    ("cut-after-comma", '{"image_prompt": "A cat",', "cut off before the quote began"),
    ("cut-in-image-prompt", '{"quote": "Hi", "image_prompt": "A ca', "cut off before the image prompt ended"),
    ("cut-in-first-field", '{"image_prompt": "A ca', "cut off before the image prompt ended"),
    ("missing-quote", '{"image_prompt": "A cat"}', "has no quote"),
    ("missing-image", '{"quote": "Hi"}', "has no image prompt"),
    ("missing-quote-labels", "Image prompt: A cat", "has no quote"),
    ("missing-both", '{"title": "Cats", "mood": "grumpy"}', "no image prompt and no quote"),
    ("empty-quote", '{"image_prompt": "A cat", "quote": ""}', "an empty quote"),
    ("blank-image", '{"image_prompt": "   ", "quote": "Hi"}', "an empty image prompt"),
    ("quotes-only-quote", '{"image_prompt": "A cat", "quote": "\\"\\""}', "an empty quote"),
    (
        "placeholders-only",
        '{"image_prompt": "<one paragraph>", "quote": "…"}',
        "an empty image prompt and an empty quote",
    ),
    ("both-empty", '{"image_prompt": "", "quote": ""}', "an empty image prompt and an empty quote"),
    ("oversized", '{"image_prompt": "' + "word " * 5000 + '", "quote": "Hi"}', "over 20000 characters long"),
    ("too-deep", "{" * 100 + "}" * 100, "16 levels deep"),
    ("runaway-unclosed", '{"image_prompt": "' + "word " * 5000, "over 20000 characters long"),
]


@pytest.mark.parametrize(("text", "words"), [pytest.param(t, w, id=i) for i, t, w in ERRORS])
def test_parse_rejects_with_a_message_naming_the_problem(text: str, words: str) -> None:
    with pytest.raises(OutputParserException) as info:
        MemeDraftParser().parse(text)
    assert words in str(info.value)
    assert info.value.llm_output == text


def test_error_message_quotes_at_most_about_200_chars_of_the_reply() -> None:
    text = '{"image_prompt": "' + "very " * 400 + 'long"}'
    with pytest.raises(OutputParserException) as info:
        MemeDraftParser().parse(text)
    problem, quoted = str(info.value).split("; the reply was: ", 1)
    assert problem == "the model's reply has no quote"
    assert len(quoted.split("\n")[0]) <= 203  # 200 characters, their quotes and the ellipsis
    assert info.value.llm_output == text


def test_a_joke_quote_that_sounds_like_a_refusal_is_still_a_quote() -> None:
    text = '{"image_prompt": "A cat ignoring its owner", "quote": "I\'m sorry, I can\'t do that, Dave"}'
    assert MemeDraftParser().parse(text).quote == "I'm sorry, I can't do that, Dave"


def test_invoke_raises_for_a_refusal_content_block() -> None:
    message = AIMessage(content=[{"type": "refusal", "refusal": "Not allowed."}])
    with pytest.raises(OutputParserException, match=r"the model refused: 'Not allowed\.'"):
        MemeDraftParser().invoke(message)


def test_invoke_accepts_a_chat_message() -> None:
    draft = MemeDraftParser().invoke(AIMessage(content='{"image_prompt": "A cat", "quote": "Hi"}'))
    assert draft == MemeDraft(image_prompt="A cat", quote="Hi")


def test_long_image_prompt_is_cut_at_a_word_boundary_and_long_quote_kept() -> None:
    words = "word " * 600
    quote = "ha " * 300
    draft = MemeDraftParser().parse(f'{{"image_prompt": "{words}", "quote": "{quote}"}}')
    assert len(draft.image_prompt) <= 2000
    assert draft.image_prompt.endswith("word")
    assert set(draft.image_prompt.split(" ")) == {"word"}
    assert draft.quote == quote.strip()


def test_meme_draft_requires_non_empty_fields_and_is_frozen() -> None:
    with pytest.raises(ValidationError):
        MemeDraft(image_prompt="  ", quote="Hi")
    draft = MemeDraft.model_validate({"image_prompt": " A cat ", "quote": "Hi", "extra": "ignored"})
    assert draft.image_prompt == "A cat"
    with pytest.raises(ValidationError):
        draft.quote = "changed"  # type: ignore[misc]


def test_format_instructions_ask_for_only_json_with_image_prompt_first() -> None:
    text = MemeDraftParser().get_format_instructions()
    assert "ONLY a JSON object" in text
    assert 0 <= text.index('"image_prompt"') < text.index('"quote"')


def test_parser_declares_its_types() -> None:
    parser = MemeDraftParser()
    assert parser.OutputType == MemeDraft | PartialMemeDraft
    assert parser._type == "meme_draft"
    assert parser.get_output_jsonschema()["anyOf"]


# ----------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------
JSON_REPLY = '{"image_prompt": "A grumpy cat on a laptop", "quote": "When the meeting\\ncould have been an email"}'
FINAL = MemeDraft(image_prompt=CAT, quote=HI)


def chunks_of(text: str, size: int) -> list[str]:
    """Text split into pieces of size characters."""
    return [text[i : i + size] for i in range(0, len(text), size)]


class Recorder:
    """An async chunk source that remembers how much text it has handed out."""

    def __init__(self, pieces: list[str], *, as_messages: bool = False) -> None:
        self.pieces = pieces
        self.as_messages = as_messages
        self.sent = ""

    async def __aiter__(self) -> AsyncIterator[str | BaseMessage]:
        for piece in self.pieces:
            self.sent += piece
            yield AIMessageChunk(content=piece) if self.as_messages else piece


async def collect(parser: MemeDraftParser, source: Recorder) -> list[tuple[str, Item]]:
    """Each item the parser yields, with the text sent when it was yielded."""
    return [(source.sent, item) async for item in parser.atransform(aiter(source))]


async def test_atransform_flags_the_image_prompt_the_moment_its_closing_quote_arrives() -> None:
    source = Recorder(chunks_of(JSON_REPLY, 1))
    events = await collect(MemeDraftParser(), source)
    partials = [(sent, item) for sent, item in events if isinstance(item, PartialMemeDraft)]
    first_done = next(i for i, (_, p) in enumerate(partials) if p.image_prompt_complete)
    sent, partial = partials[first_done]
    # Flagged with the comma after the closing quote: a quote followed by anything else was an unescaped one.
    assert sent == JSON_REPLY[: JSON_REPLY.index(CAT) + len(CAT) + 2]
    assert partial == PartialMemeDraft(image_prompt=CAT, image_prompt_complete=True)
    # Before that, the image prompt grew; after it, the quote grows while the image prompt stays put.
    assert all(not p.image_prompt_complete and p.quote is None for _, p in partials[:first_done])
    later = [p for _, p in partials[first_done + 1 :]]
    assert all(p.image_prompt == CAT and p.image_prompt_complete for p in later)
    quotes = [p.quote or "" for p in later if not p.quote_complete]
    assert len(set(quotes)) == len(quotes) > 5
    assert all(a and b.startswith(a.rstrip()) for a, b in itertools.pairwise(quotes))
    assert not any(p.quote_complete for p in later[:-1]) and later[-1].quote_complete
    assert events[-1][1] == FINAL


async def test_stream_yields_only_changes_and_ends_with_the_draft() -> None:
    padded = (
        'Here you go!\n\n```json\n{\n    "image_prompt":    "A cat",\n\n'
        '    "quote": "Hi"\n}\n```\nEnjoy the meme, friend.'
    )
    events = await collect(MemeDraftParser(), Recorder(chunks_of(padded, 2)))
    items = [item for _, item in events]
    assert items[-1] == MemeDraft(image_prompt="A cat", quote="Hi")
    assert all(isinstance(item, PartialMemeDraft) for item in items[:-1])
    assert all(a != b for a, b in itertools.pairwise(items))
    # The closing brace settles the draft; nothing after it (fence, prose) yields an item.
    assert len(events[-2][0]) <= padded.index("}") + 2
    assert items[-2] == PartialMemeDraft(
        image_prompt="A cat", quote="Hi", image_prompt_complete=True, quote_complete=True
    )


async def test_chain_astream_with_message_chunks_from_a_fenced_reply_with_prose() -> None:
    reply = f"Sure! Here's a meme about meetings.\n```json\n{JSON_REPLY}\n```\nWant another?"

    async def model(_: Any) -> AsyncIterator[AIMessageChunk]:
        for piece in chunks_of(reply, 7):
            yield AIMessageChunk(content=piece)

    chain = RunnableLambda(model) | MemeDraftParser()
    items = [item async for item in chain.astream(None)]
    partials = [item for item in items if isinstance(item, PartialMemeDraft)]
    done = [i for i, p in enumerate(partials) if p.image_prompt_complete]
    growing_quote = [i for i, p in enumerate(partials) if p.quote and not p.quote_complete]
    assert done and growing_quote and done[0] < growing_quote[0]
    assert partials[done[0]].image_prompt == CAT
    assert items[-1] == FINAL


async def test_image_prompt_second_is_complete_only_when_its_string_closes() -> None:
    reply = '{"quote": "Hi there", "image_prompt": "A cat \\"napping\\" on a laptop"}'
    events = await collect(MemeDraftParser(), Recorder(chunks_of(reply, 1), as_messages=True))
    partials = [(sent, item) for sent, item in events if isinstance(item, PartialMemeDraft)]
    first_done = next(i for i, (_, p) in enumerate(partials) if p.image_prompt_complete)
    assert partials[first_done][0] == reply  # the closing quote, then the brace that confirms it
    assert partials[first_done][1].image_prompt == 'A cat "napping" on a laptop'
    quote_done = next(i for i, (_, p) in enumerate(partials) if p.quote_complete)
    assert quote_done < first_done
    assert any(p.image_prompt and not p.image_prompt_complete for _, p in partials[quote_done:first_done])
    assert events[-1][1] == MemeDraft(image_prompt='A cat "napping" on a laptop', quote="Hi there")


async def test_top_and_bottom_text_quote_completes_only_with_both_halves() -> None:
    reply = '{"image_prompt": "A cat", "top_text": "Setup", "bottom_text": "Punchline"}'
    events = await collect(MemeDraftParser(), Recorder(chunks_of(reply, 1)))
    partials = [item for _, item in events if isinstance(item, PartialMemeDraft)]
    assert any(p.quote == "Setup" and not p.quote_complete for p in partials)
    assert next(p for p in partials if p.quote_complete).quote == "Setup\nPunchline"
    assert events[-1][1] == MemeDraft(image_prompt="A cat", quote="Setup\nPunchline")


async def test_stream_of_a_chat_model_through_astream() -> None:
    model = GenericFakeChatModel(messages=iter([AIMessage(content=JSON_REPLY)]))
    items = [item async for item in (model | MemeDraftParser()).astream("a meme about meetings")]
    assert len(items) > 3
    assert any(isinstance(i, PartialMemeDraft) and i.image_prompt_complete and not i.quote_complete for i in items)
    assert items[-1] == FINAL


def test_sync_stream_ends_with_the_draft() -> None:
    def model(_: Any) -> Iterator[str]:
        yield from chunks_of(JSON_REPLY, 5)

    items = list((RunnableLambda(model) | MemeDraftParser()).stream(None))
    assert isinstance(items[0], PartialMemeDraft)
    assert items[-1] == FINAL


async def test_label_style_stream_yields_just_the_final_draft() -> None:
    events = await collect(MemeDraftParser(), Recorder(chunks_of("Image prompt: A cat\nQuote: Hi", 3)))
    assert [item for _, item in events] == [MemeDraft(image_prompt="A cat", quote="Hi")]


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        pytest.param('{"image_prompt": "A cat", "quote": "When the meet', "cut off before the quote ended", id="cut"),
        pytest.param("I'm sorry, but I can't help with that.", "the model refused", id="refusal"),
        pytest.param('{"image_prompt": "A cat"}\n\nI could not think of a quote.', "has no quote", id="missing"),
    ],
)
async def test_stream_raises_at_the_end_when_the_reply_is_unusable(reply: str, words: str) -> None:
    seen: list[Item] = []
    with pytest.raises(OutputParserException, match=words):
        async for item in MemeDraftParser().atransform(aiter(Recorder(chunks_of(reply, 4)))):
            seen.append(item)
    assert all(isinstance(item, PartialMemeDraft) for item in seen)


async def test_stream_raises_for_a_streamed_refusal_block() -> None:
    refusal = AIMessageChunk(content=[{"type": "refusal", "refusal": "Not allowed."}])

    async def model(_: Any) -> AsyncIterator[AIMessageChunk]:
        yield refusal

    with pytest.raises(OutputParserException, match="the model refused"):
        [item async for item in (RunnableLambda(model) | MemeDraftParser()).astream(None)]


async def test_stream_reads_on_when_the_first_object_closes_without_a_quote() -> None:
    # The one case where a flagged image prompt is not the final one: the first object's image prompt
    # closed (canonical key, so flagged at once), but the object ended without a quote.
    reply = '{"image_prompt": "A"}\n{"image_prompt": "B", "quote": "b"}'
    items = [item for _, item in await collect(MemeDraftParser(), Recorder(chunks_of(reply, 1)))]
    partials = [item for item in items if isinstance(item, PartialMemeDraft)]
    assert partials[0].image_prompt == "A"
    assert partials[-1] == PartialMemeDraft(
        image_prompt="B", quote="b", image_prompt_complete=True, quote_complete=True
    )
    assert items[-1] == MemeDraft(image_prompt="B", quote="b")


STREAM_CASES = [case for case in ALL_CASES if case.id != "several:first-incomplete"]


@pytest.mark.parametrize(("text", "image_prompt", "quote"), STREAM_CASES)
@pytest.mark.parametrize("size", [1, 6])
async def test_streaming_agrees_with_parse(text: str, image_prompt: str, quote: str, size: int) -> None:
    events = await collect(MemeDraftParser(), Recorder(chunks_of(text, size), as_messages=size == 6))
    final = MemeDraft(image_prompt=image_prompt, quote=quote)
    assert events[-1][1] == final
    for _, item in events[:-1]:
        assert isinstance(item, PartialMemeDraft)
        if item.image_prompt_complete:
            assert item.image_prompt == final.image_prompt
        if item.quote_complete:
            assert item.quote == final.quote
