"""Tracing: the JSONL run tree and its tree view, and LangSmith runs as a local stand-in for its API receives them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import zstandard
from fastapi_poe.types import ProtocolMessage, QueryRequest
from langchain_core.runnables import RunnableConfig
from pydantic import SecretStr
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chains import build_meme_chain
from chains.meme import Meme
from chains.poe_client import POE_REQUEST_KEY
from chains.tracing import flush_tracing, read_trace, render_tree, summarise, tracing_callbacks
from lab.costs import declared_points
from localpoe import LocalPoeServer
from tests.conftest import BOT_ACCESS_KEY, USER_API_KEY
from tests.threaded_server import ThreadedUvicorn

REPO = Path(__file__).resolve().parent.parent
LANGSMITH_KEY = "lsv2_pt_0123456789abcdef0123456789abcdef_0123456789"
STEPS = {"MemeRequest", "ChatPromptTemplate", "ChatPoe", "MemeDraftParser", "Illustrator", "CaptionOverlay"}


def chain_for(server: LocalPoeServer, **kwargs: Any) -> Any:
    return build_meme_chain(poe_url=server.url, caption=True, max_retries=0, **kwargs)


def served_request(topic: str) -> QueryRequest:
    return QueryRequest(
        version="1.2",
        type="query",
        query=[ProtocolMessage(role="user", content=topic)],
        user_id="u-traced",
        conversation_id="c-traced",
        message_id="m-traced",
        access_key=BOT_ACCESS_KEY,
    )


def served_config(topic: str, trace_file: Path | None) -> RunnableConfig:
    """What the bot's run config holds for one message (see server.py), with the tracing callbacks."""
    return {
        "run_name": "MemeBot",
        "configurable": {POE_REQUEST_KEY: served_request(topic), "text_bot": "Claude-3-Haiku"},
        "metadata": {"conversation_id": "c-traced", "text_bot": "Claude-3-Haiku", "image_bot": "FLUX-schnell"},
        "callbacks": tracing_callbacks(trace_file),
    }


def text_of(tree: Any) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(tree)
    output = console.file
    assert isinstance(output, io.StringIO)
    return output.getvalue()


async def test_jsonl_trace_holds_the_whole_tree_and_reads_back_as_one(
    local_poe: LocalPoeServer, tmp_path: Path
) -> None:
    trace_file = tmp_path / "trace.jsonl"
    chain = chain_for(local_poe, api_key=USER_API_KEY)
    config: RunnableConfig = {
        "callbacks": tracing_callbacks(trace_file),
        "metadata": {"variant": "a/b", "text_bot": "GPT-4o-Mini", "image_bot": "DALL-E-3"},
        "configurable": {"image_bot": "DALL-E-3"},
    }
    steps = [step async for step in chain.astream({"topic": "Monday mornings"}, config)]
    assert isinstance(steps[-1], Meme)

    records = [json.loads(line) for line in trace_file.read_text().splitlines()]
    (root,) = read_trace(trace_file)
    assert root.name == "MemeChain" and not root.orphan
    assert [c.name for c in root.children if c.name in STEPS] == [
        "MemeRequest",
        "ChatPromptTemplate",
        "ChatPoe",
        "MemeDraftParser",
        "Illustrator",
        "CaptionOverlay",
    ]
    illustrator = next(c for c in root.children if c.name == "Illustrator")
    assert [c.name for c in illustrator.children] == ["PoeImageGenerator"]
    assert len(records) == sum(1 for _ in root.walk())
    assert {r["trace_id"] for r in records} == {root.record["id"]}
    llm = next(c for c in root.children if c.name == "ChatPoe").record
    assert llm["run_type"] == "llm" and llm["bot"] == "GPT-4o-Mini" and llm["tokens"]["chunks"] >= 1
    assert 0 <= llm["tokens"]["first_token_s"] <= llm["duration_s"]
    assert "quote" in llm["outputs"]["text"]
    assert illustrator.children[0].record["bot"] == "DALL-E-3"
    assert root.record["metadata"]["variant"] == "a/b"
    assert (
        "<" in root.record["outputs"]["output"]["picture"] and "bytes>" in root.record["outputs"]["output"]["picture"]
    )

    shown = text_of(render_tree(root, cost_of=declared_points))
    for name in (*STEPS, "PoeImageGenerator", "variant=a/b", "first token", "chunks", "points"):
        assert name in shown
    assert USER_API_KEY not in trace_file.read_text()


async def test_failed_runs_are_traced_with_their_error(local_poe: LocalPoeServer, tmp_path: Path) -> None:
    trace_file = tmp_path / "trace.jsonl"
    chain = chain_for(local_poe, api_key=USER_API_KEY)
    config: RunnableConfig = {"callbacks": tracing_callbacks(trace_file), "configurable": {"text_bot": "No-Such-Bot"}}
    with pytest.raises(Exception, match="No-Such-Bot"):
        await chain.ainvoke({"topic": "Monday"}, config)
    (root,) = read_trace(trace_file)
    failed = [node for node in root.walk() if node.record["error"]]
    assert {node.name for node in failed} >= {"MemeChain", "ChatPoe"}
    shown = text_of(render_tree(root))
    assert "✗" in shown and "No-Such-Bot" in shown


async def test_served_requests_keys_stay_out_of_the_jsonl_trace(local_poe: LocalPoeServer, tmp_path: Path) -> None:
    trace_file = tmp_path / "served.jsonl"
    chain = chain_for(local_poe)  # no API key: calls go out on behalf of the served message
    meme = await chain.ainvoke({"topic": "Monday"}, served_config("Monday", trace_file))
    assert isinstance(meme, Meme)
    text = trace_file.read_text()
    assert BOT_ACCESS_KEY not in text and "access_key" not in text and "Authorization" not in text
    (root,) = read_trace(trace_file)
    assert root.name == "MemeBot" and root.record["metadata"]["conversation_id"] == "c-traced"


def test_summaries_mask_keys_and_drop_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POE_API_KEY", USER_API_KEY)
    summary = summarise(
        {
            "api_key": "anything at all",
            "headers": {"Authorization": "Bearer 0123456789abcdef0123"},
            "note": f"the key is {USER_API_KEY}; Bearer abcdef0123456789abcdef went by",
            "secret": SecretStr("hidden"),
            "picture": b"\x89PNG" * 1000,
            "request": served_request("x"),
            "said": "the bearer of wonderful news",
        },
        (USER_API_KEY,),
    )
    text = json.dumps(summary)
    assert USER_API_KEY not in text and BOT_ACCESS_KEY not in text
    assert "anything at all" not in text and "hidden" not in text and "abcdef0123456789abcdef" not in text
    assert summary["picture"] == "<4,000 bytes>"
    assert summary["request"]["conversation_id"] == "c-traced"
    assert summary["said"] == "the bearer of wonderful news"


@dataclass
class LangSmithStandIn:
    """Collects what a LangSmith client posts: every request body (decompressed) and the runs they describe."""

    bodies: list[bytes] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def app(self) -> Starlette:
        async def info(request: Request) -> Response:
            return JSONResponse(
                {
                    "version": "0.11.0",
                    "instance_flags": {"zstd_compression_enabled": True},
                    "batch_ingest_config": {
                        "use_multipart_endpoint": True,
                        "scale_up_qsize_trigger": 1000,
                        "scale_up_nthreads_limit": 1,
                        "scale_down_nempty_trigger": 4,
                        "size_limit": 100,
                        "size_limit_bytes": 20_000_000,
                    },
                }
            )

        async def multipart(request: Request) -> Response:
            body = self._body(await request.body(), request.headers.get("content-encoding"))
            boundary = request.headers["content-type"].split("boundary=")[1].strip('"').encode()
            for part in body.split(b"--" + boundary):
                head, sep, value = part.strip(b"\r\n").partition(b"\r\n\r\n")
                if sep and b'name="' in head:
                    name = head.split(b'name="')[1].split(b'"')[0].decode()
                    self._merge(name, json.loads(value))
            return JSONResponse({})

        async def batch(request: Request) -> Response:
            body = json.loads(self._body(await request.body(), request.headers.get("content-encoding")))
            for operation in ("post", "patch"):
                for run in body.get(operation, []):
                    self.runs.setdefault(run["id"], {}).update(run)
            return JSONResponse({})

        async def elsewhere(request: Request) -> Response:
            self.bodies.append(await request.body())
            return JSONResponse({})

        routes = [
            Route("/info", info),
            Route("/runs/multipart", multipart, methods=["POST"]),
            Route("/runs/batch", batch, methods=["POST"]),
            Route("/{path:path}", elsewhere, methods=["GET", "POST", "PATCH", "PUT"]),
        ]
        return Starlette(routes=routes)

    def _body(self, raw: bytes, encoding: str | None) -> bytes:
        body = zstandard.ZstdDecompressor().decompressobj().decompress(raw) if encoding == "zstd" else raw
        self.bodies.append(body)
        return body

    def _merge(self, name: str, value: Any) -> None:
        # Parts are named "post.<id>" (the run), "post.<id>.inputs", "patch.<id>.outputs", ...
        _, run_id, *key = name.split(".")
        run = self.runs.setdefault(run_id, {})
        if key:
            run[key[0]] = value
        elif isinstance(value, dict):
            run.update(value)

    def trees(self) -> dict[str, list[dict[str, Any]]]:
        """Runs grouped by trace."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for run in self.runs.values():
            grouped.setdefault(str(run.get("trace_id")), []).append(run)
        return grouped

    def everything(self) -> str:
        return "\n".join(body.decode("utf-8", "replace") for body in self.bodies)


def _reset_langsmith_caches() -> None:
    from langsmith import utils as ls_utils

    # LangSmith reads its variables once per process; these tests change them.
    cast(Any, ls_utils.get_env_var).cache_clear()
    cast(Any, ls_utils.get_tracer_project).cache_clear()


@pytest.fixture
def langsmith(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LangSmithStandIn, dict[str, str]]]:
    """A LangSmith stand-in on loopback, and LangSmith's standard variables pointing at it (set here too)."""
    stand_in = LangSmithStandIn()
    server = ThreadedUvicorn(stand_in.app()).start()
    env = {
        "LANGSMITH_TRACING": "true",
        "LANGSMITH_ENDPOINT": server.url.rstrip("/"),
        "LANGSMITH_API_KEY": LANGSMITH_KEY,
        "LANGSMITH_PROJECT": "memebot-tests",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _reset_langsmith_caches()
    yield stand_in, env
    flush_tracing()
    server.stop()
    monkeypatch.undo()
    _reset_langsmith_caches()


def check_tree(runs: list[dict[str, Any]], root_name: str) -> dict[str, Any]:
    """The tree's root, after checking that every run hangs from a run of the same tree."""
    by_id = {run["id"]: run for run in runs}
    (root,) = [run for run in runs if not run.get("parent_run_id")]
    assert root["name"] == root_name
    for run in runs:
        if run is not root:
            assert run["parent_run_id"] in by_id
            assert run["dotted_order"].startswith(root["dotted_order"])
    children = {run["name"] for run in runs if run.get("parent_run_id") == root["id"]}
    assert children >= STEPS
    illustrator = next(run for run in runs if run["name"] == "Illustrator")
    painter = next(run for run in runs if run["name"] == "PoeImageGenerator")
    while painter["parent_run_id"] != illustrator["id"]:  # through a fallbacks run when there is one
        painter = by_id[painter["parent_run_id"]]
        assert painter is not root
    return root


async def test_langsmith_receives_one_tree_per_meme_with_metadata_and_no_keys(
    local_poe: LocalPoeServer, langsmith: tuple[LangSmithStandIn, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in, _ = langsmith
    monkeypatch.setenv("POE_API_KEY", USER_API_KEY)
    chain = chain_for(local_poe)
    made = await chain.ainvoke(
        {"topic": "Monday mornings"},
        {"callbacks": tracing_callbacks(None), "metadata": {"variant": "GPT-4o-Mini / FLUX-schnell / v1"}},
    )
    served = await chain.ainvoke({"topic": "my cat"}, served_config("my cat", None))
    assert isinstance(made, Meme) and isinstance(served, Meme)
    flush_tracing()

    trees = list(stand_in.trees().values())
    assert len(trees) == 2
    made_root, served_root = check_tree(trees[0], "MemeChain"), check_tree(trees[1], "MemeBot")
    assert made_root["extra"]["metadata"]["variant"] == "GPT-4o-Mini / FLUX-schnell / v1"
    assert made_root["outputs"]["output"]["picture"].endswith(" bytes>")  # its size, not megabytes of base64
    assert served_root["extra"]["metadata"]["conversation_id"] == "c-traced"
    assert served_root["extra"]["metadata"]["text_bot"] == "Claude-3-Haiku"
    everything = stand_in.everything()
    for secret in (USER_API_KEY, BOT_ACCESS_KEY, LANGSMITH_KEY, "Authorization", "access_key"):
        assert secret not in everything


def test_cli_make_traces_to_langsmith_and_jsonl_and_prints_the_tree(
    tmp_path: Path, langsmith: tuple[LangSmithStandIn, dict[str, str]]
) -> None:
    stand_in, langsmith_env = langsmith
    trace_file = tmp_path / "make.jsonl"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("POE_", "MEMEBOT_", "LANGSMITH_"))}
    environment.update(langsmith_env)
    arguments = ["make", "Monday mornings", "--out", str(tmp_path / "m.png"), "--trace", str(trace_file)]
    make = subprocess.run(
        [sys.executable, "-m", "cli", *arguments, "--image-bot", "Imagen-3"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert make.returncode == 0, make.stderr
    (runs,) = stand_in.trees().values()
    root = check_tree(runs, "MemeChain")
    assert root["extra"]["metadata"]["image_bot"] == "Imagen-3"
    assert "Authorization" not in stand_in.everything() and LANGSMITH_KEY not in stand_in.everything()

    (tree,) = read_trace(trace_file)
    assert {node.record["id"] for node in tree.walk()} == {run["id"] for run in runs}
    shown = subprocess.run(
        [sys.executable, "-m", "cli", "trace", str(trace_file)],
        cwd=REPO,
        env={**environment, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    for name in (*STEPS, "PoeImageGenerator", "Imagen-3", "1 run tree", " 0 with errors"):
        assert name in shown.stdout


async def test_the_served_bot_writes_one_tree_per_message_to_its_trace_file(
    bot_config: Any, serve_bot: Any, access_key: str, tmp_path: Path
) -> None:
    from bot.poe_conversation import PoeConversation
    from server import create_app

    trace_file = tmp_path / "bot.jsonl"
    url = serve_bot(create_app(bot_config.model_copy(update={"trace_file": str(trace_file)})))
    conversation = PoeConversation(url, access_key)
    await conversation.send("Monday mornings")
    await conversation.send("make it darker")
    flush_tracing()
    trees = read_trace(trace_file)
    assert [t.name for t in trees] == ["MemeBot", "MemeBot"]
    names = {node.name for node in trees[0].walk()}
    assert {"ChatPoe", "MemeDraftParser", "Illustrator", "PoeImageGenerator", "CaptionOverlay"} <= names
    assert trees[1].record["metadata"]["follow_up"] == "darker"
    assert trees[0].record["metadata"]["conversation_id"] == conversation.conversation_id
    assert not any(node.record.get("error") for tree in trees for node in tree.walk())
    raw = trace_file.read_text()
    assert access_key not in raw and "Bearer" not in raw
