"""Experiments: the meme chain over topics x text bots x image bots x prompts, saved row by row, resumable."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, ConfigDict, Field

from bot.language import detect_language
from chains.meme import Meme, MemeStep
from chains.secrets import redact, secrets_from_env
from lab.costs import meme_points

RESULTS_FILE: Final = "results.jsonl"
PICTURES_DIR: Final = "memes"
MAX_ERROR_CHARS: Final = 300
PARSER_STEP: Final = "MemeDraftParser"

RowKey = tuple[str, str]
"""(topic, variant label): what makes a row of an experiment."""


@dataclass(frozen=True)
class Variant:
    """One way of making the meme: a text bot, an image bot and a prompt variant."""

    text_bot: str
    image_bot: str
    prompt: str = "v1"

    @property
    def label(self) -> str:
        return f"{self.text_bot} / {self.image_bot} / {self.prompt}"

    @property
    def slug(self) -> str:
        return slugify(f"{self.text_bot}--{self.image_bot}--{self.prompt}")

    def configurable(self) -> dict[str, Any]:
        """The chain's `configurable` values that select this variant."""
        return {"text_bot": self.text_bot, "image_bot": self.image_bot, "prompt_variant": self.prompt}


def variant_grid(
    text_bots: Sequence[str], image_bots: Sequence[str], prompts: Sequence[str] = ("v1",)
) -> list[Variant]:
    """Every combination, in the order given, without repeats."""
    combos = (Variant(t, i, p) for t in text_bots for i in image_bots for p in prompts)
    return list(dict.fromkeys(combos))


def read_topics(path: str | os.PathLike[str]) -> list[str]:
    """Topics from a text file, one a line; blank lines and lines starting with # are skipped, repeats dropped."""
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))


def slugify(text: str, limit: int = 60) -> str:
    """A file-name-safe form of text (letters of any script kept)."""
    slug = re.sub(r"[^\w]+", "-", text.lower(), flags=re.UNICODE).strip("-_")
    return slug[:limit].rstrip("-_") or "x"


class RowResult(BaseModel):
    """One row of an experiment: a topic made into a meme by one variant, or the error that stopped it."""

    topic: str
    variant: str
    text_bot: str
    image_bot: str
    prompt: str
    status: Literal["ok", "error"]
    error_type: str | None = None
    error: str | None = None
    parsed: bool | None = None
    """Whether the draft parsed; None when the writer's text never reached the parser."""
    draft: dict[str, str] | None = None
    quote_chars: int | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    """Seconds: first_token_s and total_s (whole chain) plus the chain's own step timings."""
    image_bot_used: str | None = None
    cost_points: float | None = None
    picture: str | None = None
    """The meme's file, relative to the experiment's directory."""
    run_id: str | None = None
    finished_at: str = ""

    model_config = ConfigDict(extra="ignore")

    @property
    def key(self) -> RowKey:
        return (self.topic, self.variant)


class ResultsFile:
    """results.jsonl: one row a line, appended and flushed as each row finishes, so a killed run loses none."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[RowResult]:
        """Every row in the file, oldest first; a last line cut short by a kill is dropped from the file."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with self.path.open("r+b") as stream:
                stream.truncate(cut)
            data = data[:cut]
        rows: list[RowResult] = []
        for line in data.decode("utf-8").splitlines():
            try:
                rows.append(RowResult.model_validate_json(line))
            except ValueError:
                continue  # a line from another tool or version; the row will be made again
        return rows

    def latest(self) -> dict[RowKey, RowResult]:
        """The last row written for each key."""
        return {row.key: row for row in self.read()}

    def append(self, row: RowResult) -> None:
        """Add one row and flush it to the operating system."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(row.model_dump_json() + "\n")
            stream.flush()

    def compact(self) -> None:
        """Rewrite the file with only the last row of each key (after errored rows were made again)."""
        rows = self.read()
        latest = self.latest()
        if len(rows) == len(latest):
            return
        temporary = self.path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(r.model_dump_json() + "\n" for r in latest.values()), encoding="utf-8")
        os.replace(temporary, self.path)


class RowRecorder(BaseCallbackHandler):
    """Watches one row's runs: when the chain started and ended, the first token, whether the draft parsed."""

    run_inline: bool = True  # timestamps taken when things happen, not when an executor gets to them

    def __init__(self) -> None:
        self.started: float | None = None
        self.ended: float | None = None
        self.first_token: float | None = None
        self.root_run_id: UUID | None = None
        self.parsed: bool | None = None
        self.draft: dict[str, str] | None = None
        self._parser_runs: set[UUID] = set()

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if parent_run_id is None and self.root_run_id is None:
            self.root_run_id, self.started = run_id, time.perf_counter()
        if kwargs.get("name") == PARSER_STEP:
            self._parser_runs.add(run_id)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if run_id == self.root_run_id:
            self.ended = time.perf_counter()
        if run_id in self._parser_runs:
            self.parsed = True
            output = outputs.get("output", outputs) if isinstance(outputs, dict) else outputs
            quote, image_prompt = getattr(output, "quote", None), getattr(output, "image_prompt", None)
            if isinstance(quote, str) and isinstance(image_prompt, str):
                self.draft = {"quote": quote, "image_prompt": image_prompt}

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if run_id == self.root_run_id:
            self.ended = time.perf_counter()
        if run_id in self._parser_runs:
            self.parsed = False

    def on_llm_new_token(self, token: str | list[str | dict[str, Any]], **kwargs: Any) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def timings(self) -> dict[str, float]:
        """first_token_s and total_s, from the chain's start."""
        found: dict[str, float] = {}
        if self.started is not None:
            if self.first_token is not None:
                found["first_token_s"] = self.first_token - self.started
            if self.ended is not None:
                found["total_s"] = self.ended - self.started
        return found


class StreamedMeme(Runnable[Any, Meme]):
    """The meme chain invoked by streaming it, so the picture starts while the quote streams, as in the bot.

    Batching this (`abatch`, `abatch_as_completed`) runs each row as the bot would; the runs it makes are the
    chain's own, one tree per meme, with no extra level above them.
    """

    def __init__(self, chain: Runnable[Any, MemeStep]) -> None:
        self.chain = chain

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Meme:
        last: MemeStep | None = None
        async for step in self.chain.astream(input, config, **kwargs):
            last = step
        if not isinstance(last, Meme):
            raise RuntimeError("the meme chain ended without a meme")
        return last

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Meme:
        last: MemeStep | None = None
        for step in self.chain.stream(input, config, **kwargs):
            last = step
        if not isinstance(last, Meme):
            raise RuntimeError("the meme chain ended without a meme")
        return last


@dataclass
class Experiment:
    """A grid of rows (topic x variant) run through the meme chain, `concurrency` at a time, into `out_dir`."""

    chain: Runnable[Any, MemeStep]
    topics: Sequence[str]
    variants: Sequence[Variant]
    out_dir: Path
    concurrency: int = 4
    retry_errors: bool = False
    callbacks: Sequence[BaseCallbackHandler] = ()
    """Added to every row's run config (tracers)."""
    points: Mapping[str, float] = field(default_factory=dict)
    """Overrides of the declared points table."""
    secrets: Sequence[str] = ()
    """Strings never written to results (the API key in use)."""
    name: str = ""

    def __post_init__(self) -> None:
        self.results = ResultsFile(self.out_dir / RESULTS_FILE)
        self.name = self.name or self.out_dir.resolve().name

    def grid(self) -> Iterator[tuple[str, Variant]]:
        """Every row of the grid: each topic with each variant."""
        for topic in self.topics:
            for variant in self.variants:
                yield topic, variant

    def pending(self) -> list[tuple[str, Variant]]:
        """Rows still to make: never made, or (with retry_errors) made with an error."""
        done = self.results.latest()

        def finished(row: RowResult | None) -> bool:
            return row is not None and (row.status == "ok" or not self.retry_errors)

        return [(topic, v) for topic, v in self.grid() if not finished(done.get((topic, v.label)))]

    def rows(self) -> list[RowResult]:
        """The rows of this grid found in the results file, in grid order."""
        done = self.results.latest()
        return [row for topic, v in self.grid() if (row := done.get((topic, v.label))) is not None]

    def row_config(self, topic: str, variant: Variant, recorder: RowRecorder) -> RunnableConfig:
        """The run config of one row: the variant through `configurable`, readable metadata for traces."""
        return {
            "configurable": {**variant.configurable(), "caption_language": detect_language(topic)},
            "metadata": {
                "experiment": self.name,
                "variant": variant.label,
                "topic": topic,
                "text_bot": variant.text_bot,
                "image_bot": variant.image_bot,
                "prompt_variant": variant.prompt,
            },
            "tags": ["experiment"],
            "callbacks": [recorder, *self.callbacks],
            "max_concurrency": self.concurrency,
        }

    async def run(self, on_row: Callable[[RowResult], None] | None = None) -> list[RowResult]:
        """Make every pending row, appending each to results.jsonl as it finishes; returns the new rows."""
        todo = self.pending()
        recorders = [RowRecorder() for _ in todo]
        inputs = [{"topic": topic, "language": detect_language(topic)} for topic, _ in todo]
        configs = [self.row_config(t, v, r) for (t, v), r in zip(todo, recorders, strict=True)]
        made: list[RowResult] = []
        batch = StreamedMeme(self.chain).abatch_as_completed(inputs, configs, return_exceptions=True)
        async for index, outcome in batch:
            topic, variant = todo[index]
            row = await self._row(topic, variant, recorders[index], outcome)
            self.results.append(row)
            made.append(row)
            if on_row is not None:
                on_row(row)
        self.results.compact()
        return made

    async def _row(self, topic: str, variant: Variant, recorder: RowRecorder, outcome: Meme | Exception) -> RowResult:
        timings = recorder.timings()
        common: dict[str, Any] = {
            "topic": topic,
            "variant": variant.label,
            "text_bot": variant.text_bot,
            "image_bot": variant.image_bot,
            "prompt": variant.prompt,
            "cost_points": meme_points((variant.text_bot, variant.image_bot), self.points),
            "run_id": str(recorder.root_run_id) if recorder.root_run_id else None,
            "finished_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        if isinstance(outcome, Meme):
            picture = await self._save_picture(topic, variant, outcome)
            return RowResult(
                **common,
                status="ok",
                parsed=True,
                draft={"quote": outcome.quote, "image_prompt": outcome.image_prompt},
                quote_chars=len(outcome.quote),
                image_bot_used=outcome.image.bot_name or variant.image_bot,
                picture=picture,
                timings={**outcome.timings, **timings},
            )
        parsed = False if isinstance(outcome, OutputParserException) else recorder.parsed
        draft = recorder.draft
        return RowResult(
            **common,
            status="error",
            error_type=type(outcome).__name__,
            error=self._clean(str(outcome) or type(outcome).__name__),
            parsed=parsed,
            draft=draft,
            timings=timings,
            quote_chars=len(draft["quote"]) if draft else None,
        )

    def _clean(self, text: str) -> str:
        text = redact(" ".join(text.split()), (*secrets_from_env(), *self.secrets))
        return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"

    async def _save_picture(self, topic: str, variant: Variant, meme: Meme) -> str:
        data = meme.picture if meme.picture is not None else await meme.image.aread()
        name = meme.picture_name or meme.image.name or "meme.png"
        suffix = Path(name).suffix or ".png"
        digest = hashlib.sha256(topic.encode()).hexdigest()[:8]
        relative = Path(PICTURES_DIR) / variant.slug / f"{slugify(topic, 40)}-{digest}{suffix}"
        target = self.out_dir / relative
        await asyncio.to_thread(_write_bytes, target, data)
        return relative.as_posix()


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
