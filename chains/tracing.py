"""Tracing in development: the run tree as JSONL (offline) and LangSmith, with keys masked in both."""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Final
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.schemas import Run
from pydantic import BaseModel, SecretStr
from rich.text import Text
from rich.tree import Tree

from chains.secrets import MASK, redact, secrets_from_env

TRACE_FILE_ENV: Final = "MEMEBOT_TRACE_FILE"
MAX_TEXT_CHARS: Final = 2000
"""Longest string kept in a JSONL record; longer ones are cut (prompts fit, pictures do not)."""
MAX_LANGSMITH_TEXT_CHARS: Final = 20_000
"""Longest string sent to LangSmith: prompts and drafts go whole, a picture's base64 does not."""
MAX_ITEMS: Final = 50
MAX_DEPTH: Final = 8

_SECRET_NAME = re.compile(r"api_?key|access_?key|secret|password|authorization|cookie|^token$|^auth$", re.IGNORECASE)
# A token after "Bearer": long and with a digit, so "bearer of wonderful news" stays as it is.
_BEARER = re.compile(r"(?i)\bbearer\s+(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{16,}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_MIN_BASE64_CHARS: Final = 1024
IMAGE_CALL_STEP: Final = "PoeImageGenerator"
"""The run that is one call to an image bot (wrappers around it, such as fallbacks, return the same picture)."""
_SHOWN_METADATA: Final = ("variant", "text_bot", "image_bot", "prompt_variant", "conversation_id", "topic")


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _clean_text(text: str, secrets: tuple[str, ...], limit: int) -> str:
    text = _BEARER.sub(f"Bearer {MASK}", redact(text, secrets))
    if len(text) > limit:
        return f"{text[:limit]}… [{len(text) - limit:,} more characters]"
    return text


def _is_served_request(value: object) -> bool:
    # A Poe QueryRequest carries the bot's access key; only its ids are worth a trace.
    return hasattr(value, "access_key") and hasattr(value, "conversation_id")


def summarise(value: Any, secrets: Iterable[str] = (), *, limit: int = MAX_TEXT_CHARS, depth: int = 0) -> Any:
    """A JSON-able, key-free summary of any value: bytes become their size, long text is cut, keys are masked."""
    known = tuple(secrets)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _clean_text(value, known, limit)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value):,} bytes>"
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return summarise(value.value, known, limit=limit, depth=depth)
    if depth >= MAX_DEPTH:
        return "…"
    if _is_served_request(value):
        return {
            "type": type(value).__name__,
            "conversation_id": str(getattr(value, "conversation_id", "")),
            "message_id": str(getattr(value, "message_id", "")),
        }
    if isinstance(value, BaseMessage):
        return {"type": value.type, "content": summarise(value.content, known, limit=limit, depth=depth + 1)}
    if isinstance(value, BaseModel):
        fields = {name: getattr(value, name, None) for name in type(value).model_fields}
        return summarise(fields, known, limit=limit, depth=depth)
    if isinstance(value, Mapping):
        return _summarise_mapping(value, known, limit, depth)
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        kept = [summarise(item, known, limit=limit, depth=depth + 1) for item in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            kept.append(f"… {len(items) - MAX_ITEMS} more")
        return kept
    return _clean_text(repr(value), known, limit)


def _summarise_mapping(value: Mapping[Any, Any], secrets: tuple[str, ...], limit: int, depth: int) -> dict[str, Any]:
    # A LangChain-serialised object ({"lc": 1, "type": "constructor", "kwargs": {...}}) reads as its kwargs.
    if value.get("lc") == 1 and isinstance(value.get("kwargs"), Mapping):
        kwargs = {k: v for k, v in value["kwargs"].items() if v not in (None, {}, [], "")}
        return _summarise_mapping(kwargs, secrets, limit, depth)
    summary: dict[str, Any] = {}
    for index, (key, item) in enumerate(value.items()):
        if index == MAX_ITEMS:
            summary["…"] = f"{len(value) - MAX_ITEMS} more"
            break
        name = str(key)
        summary[name] = MASK if _is_secret_name(name) else summarise(item, secrets, limit=limit, depth=depth + 1)
    return summary


def _llm_outputs(outputs: Mapping[str, Any] | None, secrets: tuple[str, ...]) -> dict[str, Any] | None:
    """An LLM run's outputs as the text it wrote plus its response metadata (not the text three times over)."""
    if not outputs:
        return None
    generations = outputs.get("generations") or [[]]
    first = generations[0][0] if generations and generations[0] else {}
    message = first.get("message") if isinstance(first, Mapping) else None
    kwargs = message.get("kwargs", {}) if isinstance(message, Mapping) else {}
    summary: dict[str, Any] = {"text": summarise(first.get("text", ""), secrets) if first else ""}
    for name in ("response_metadata", "usage_metadata"):
        if kwargs.get(name):
            summary[name] = summarise(kwargs[name], secrets)
    return summary


def _token_figures(run: Run, outputs: Mapping[str, Any] | None) -> dict[str, Any]:
    tokens = [e for e in run.events if e.get("name") == "new_token"]
    figures: dict[str, Any] = {"chunks": len(tokens)}
    if tokens and isinstance(tokens[0].get("time"), datetime):
        figures["first_token_s"] = round((tokens[0]["time"] - run.start_time).total_seconds(), 4)
    usage = (outputs or {}).get("usage_metadata")
    if isinstance(usage, Mapping):
        figures.update({k: usage[k] for k in ("input_tokens", "output_tokens", "total_tokens") if k in usage})
    return figures


def run_record(run: Run, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """One finished run as a JSON-able record: ids, name, type, times, error, summarised and redacted I/O."""
    known = tuple(secrets)
    run_type = "llm" if run.run_type == "chat_model" else run.run_type
    metadata = summarise(
        {k: v for k, v in (run.extra or {}).get("metadata", {}).items() if not str(k).startswith("__")}, known
    )
    outputs = _llm_outputs(run.outputs, known) if run_type == "llm" else summarise(run.outputs, known)
    record: dict[str, Any] = {
        "id": str(run.id),
        "parent_run_id": str(run.parent_run_id) if run.parent_run_id else None,
        "trace_id": str(run.trace_id) if run.trace_id else str(run.id),
        "name": run.name,
        "run_type": run_type,
        "start_time": run.start_time.isoformat(),
        "end_time": run.end_time.isoformat() if run.end_time else None,
        "duration_s": round((run.end_time - run.start_time).total_seconds(), 4) if run.end_time else None,
        "error": _clean_text(run.error, known, MAX_TEXT_CHARS) if run.error else None,
        "inputs": summarise(run.inputs, known),
        "outputs": outputs,
        "tags": list(run.tags or []),
        "metadata": metadata,
    }
    if run_type == "llm":
        record["tokens"] = _token_figures(run, outputs)
        record["bot"] = metadata.get("ls_model_name") if isinstance(metadata, dict) else None
    elif (
        run.name == IMAGE_CALL_STEP and isinstance(outputs, dict) and isinstance(output := outputs.get("output"), dict)
    ):
        record["bot"] = output.get("bot_name")  # the image bot that drew the picture
    return record


class JsonlTracer(BaseTracer):
    """Writes one JSON line per finished run (children before their parent), keys and bytes kept out."""

    name: str = "memebot_jsonl_tracer"
    run_inline: bool = True  # in order, on the caller's thread: the run map is not shared across threads

    def __init__(self, path: str | os.PathLike[str], secrets: Iterable[str] = ()) -> None:
        super().__init__(_schema_format="original+chat")
        self.path = Path(path)
        self.secrets: set[str] = set(secrets)
        self._lock = threading.Lock()

    def add_secrets(self, secrets: Iterable[str | None]) -> None:
        """Also mask these strings from now on."""
        self.secrets.update(s for s in secrets if s)

    def _persist_run(self, run: Run) -> None:
        """Nothing left to do: every run, the root included, was written when it ended."""

    def _on_run_update(self, run: Run) -> None:
        record = run_record(run, (*secrets_from_env(), *self.secrets))
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(line)


def scrub_json(value: Any, secrets: tuple[str, ...], limit: int = MAX_LANGSMITH_TEXT_CHARS) -> Any:
    """JSON with key-named fields masked, known keys redacted, bytes (base64) summarised and long strings cut."""
    if isinstance(value, str):
        if len(value) >= _MIN_BASE64_CHARS and _BASE64.fullmatch(value):
            return f"<{len(value) * 3 // 4:,} bytes>"  # LangSmith's JSON writes bytes as base64
        return _clean_text(value, secrets, limit)
    if isinstance(value, dict):
        return {k: MASK if _is_secret_name(str(k)) else scrub_json(v, secrets, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_json(item, secrets, limit) for item in value]
    return value


class _LangSmithRedaction:
    """A LangSmith anonymizer (it receives JSON): see `scrub_json`."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        cleaned = scrub_json(data, (*secrets_from_env(), *self.secrets))
        return cleaned if isinstance(cleaned, dict) else {}


_tracers: dict[Path, JsonlTracer] = {}
_redaction = _LangSmithRedaction()
_langsmith_target: tuple[str, ...] | None = None
_lock = threading.Lock()


def _langsmith_enabled() -> bool:
    from langsmith import utils as ls_utils

    return bool(ls_utils.tracing_is_enabled())


def _install_langsmith_redaction() -> None:
    """Route LangChain's LangSmith tracer through a client whose anonymizer masks our keys (once per target)."""
    global _langsmith_target
    target = tuple(os.environ.get(f"{p}_{n}", "") for p in ("LANGSMITH", "LANGCHAIN") for n in ("ENDPOINT", "API_KEY"))
    if _langsmith_target == target:
        return
    import langsmith
    from langsmith.run_trees import configure

    configure(client=langsmith.Client(anonymizer=_redaction))
    _langsmith_target = target


def tracing_callbacks(
    trace_file: str | os.PathLike[str] | None, *, secrets: Iterable[str | None] = ()
) -> list[BaseCallbackHandler]:
    """Callbacks for a run config: the JSONL tracer when `trace_file` is set.

    When LangSmith tracing is on (`LANGSMITH_TRACING=true`), LangChain's own tracer sends the runs; this installs
    the masking of `secrets` (plus the keys in this process's environment) on its client first.
    """
    extra = tuple(s for s in secrets if s)
    with _lock:
        _redaction.secrets.update(extra)
        if _langsmith_enabled():
            _install_langsmith_redaction()
        if not trace_file:
            return []
        path = Path(trace_file).expanduser().resolve()
        tracer = _tracers.get(path)
        if tracer is None:
            tracer = _tracers[path] = JsonlTracer(path)
        tracer.add_secrets(extra)
        return [tracer]


def flush_tracing() -> None:
    """Wait until LangSmith has received every finished run (the JSONL file is written as runs end)."""
    from langchain_core.tracers.langchain import wait_for_all_tracers

    wait_for_all_tracers()


@dataclass
class TraceNode:
    """One run of a trace file and the runs it started."""

    record: dict[str, Any]
    children: list[TraceNode] = field(default_factory=list)
    orphan: bool = False

    @property
    def name(self) -> str:
        return str(self.record.get("name", "?"))

    def walk(self) -> Iterable[TraceNode]:
        """This node and all below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSONL trace file; a line cut short (a killed process) is skipped."""
    records: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as stream:
        for line in stream:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("id"):
                records.append(record)
    return records


def build_trees(records: Iterable[dict[str, Any]]) -> list[TraceNode]:
    """Run trees from records: roots in start order, children in start order; a run whose parent is missing is a
    root marked as an orphan."""
    nodes = {str(r["id"]): TraceNode(r) for r in records}
    roots: list[TraceNode] = []
    for node in nodes.values():
        parent_id = node.record.get("parent_run_id")
        parent = nodes.get(str(parent_id)) if parent_id else None
        if parent is not None:
            parent.children.append(node)
        else:
            node.orphan = parent_id is not None
            roots.append(node)

    def start(node: TraceNode) -> str:
        return str(node.record.get("start_time") or "")

    for node in nodes.values():
        node.children.sort(key=start)
    return sorted(roots, key=start)


def read_trace(path: str | os.PathLike[str]) -> list[TraceNode]:
    """The run trees of a JSONL trace file."""
    return build_trees(read_records(path))


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "unfinished"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def error_headline(error: str) -> str:
    """The exception line of a run's error (LangChain stores its repr followed by the traceback)."""
    head = error.split("Traceback (most recent call last)")[0].strip()
    return (head or error.strip()).splitlines()[0] if (head or error.strip()) else "error"


def tree_points(node: TraceNode, cost_of: Callable[[str], float | None]) -> float | None:
    """Approximate points of the bot calls in and below a run that succeeded and name a bot of known price."""
    calls = [n.record for n in node.walk() if n.record.get("bot") and not n.record.get("error")]
    known = [points for call in calls if (points := cost_of(str(call["bot"]))) is not None]
    return sum(known) if known else None


def _metadata_text(metadata: Mapping[str, Any]) -> str:
    # An experiment's variant already names the bots and the prompt.
    keys = ("variant", "conversation_id", "topic") if metadata.get("variant") else _SHOWN_METADATA
    return " ".join(f"{k}={metadata[k]}" for k in keys if metadata.get(k) not in (None, ""))


def _node_label(node: TraceNode, cost_of: Callable[[str], float | None] | None, *, root: bool) -> Text:
    record = node.record
    label = Text()
    label.append(node.name, style="bold red" if record.get("error") else "bold")
    label.append(f" {record.get('run_type', '')}", style="dim")
    label.append(f"  {_duration(record.get('duration_s'))}", style="cyan")
    tokens = record.get("tokens") or {}
    if isinstance(tokens.get("first_token_s"), int | float):
        label.append(f" · first token {_duration(tokens['first_token_s'])}", style="cyan")
    figures = [f"{tokens[k]} {k.split('_')[0]} tokens" for k in ("input_tokens", "output_tokens") if k in tokens]
    if not figures and tokens.get("chunks"):
        figures.append(f"{tokens['chunks']} chunks")
    if figures:
        label.append(" · " + ", ".join(figures), style="green")
    if bot := record.get("bot"):
        label.append(f" · {bot}", style="magenta")
    if cost_of is not None and (root or bot) and (points := tree_points(node, cost_of)) is not None:
        label.append(f" · ~{points:g} points", style="yellow")
    metadata = record.get("metadata")
    if root and isinstance(metadata, Mapping) and (shown := _metadata_text(metadata)):
        label.append(f"  {shown}", style="dim")
    if node.orphan:
        label.append("  (its parent run is not in the file)", style="yellow")
    if record.get("error"):
        label.append(f"\n✗ {error_headline(str(record['error']))[:300]}", style="red")
    return label


def render_tree(
    node: TraceNode,
    *,
    cost_of: Callable[[str], float | None] | None = None,
    show_io: bool = False,
    tree: Tree | None = None,
) -> Tree:
    """A Rich tree of one run and its children, with durations, errors and token/cost figures."""
    label = _node_label(node, cost_of, root=tree is None)
    branch = Tree(label) if tree is None else tree.add(label)
    if show_io:
        for part in ("inputs", "outputs"):
            value = node.record.get(part)
            if value:
                text = json.dumps(value, ensure_ascii=False)
                branch.add(Text(f"{part}: {text[:400]}{'…' if len(text) > 400 else ''}", style="dim"))
    for child in node.children:
        render_tree(child, cost_of=cost_of, show_io=show_io, tree=branch)
    return branch
