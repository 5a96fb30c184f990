"""LocalPoe: the platform's state (bot registry, auth, knobs, counters, recordings, file store)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi_poe.types import SettingsResponse

from localpoe import bots
from localpoe.events import BotHandler
from localpoe.files import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, FileStore
from localpoe.knobs import BotKnobs, FaultDrawer, FaultKind, KnobSet

logger = logging.getLogger("localpoe")

_SECRET_FIELDS = ("access_key", "api_key")


class PlatformClosing(Exception):
    """Raised inside a waiting bot stream when the server shuts down."""


@dataclass(frozen=True)
class RegisteredBot:
    """A bot in the registry."""

    name: str
    handler: BotHandler
    settings: SettingsResponse


@dataclass
class BotStats:
    """Counters for one bot."""

    started: int = 0
    completed: int = 0  # streams that reached `done`
    errors: int = 0  # `error` events sent (injected or not)
    aborted: int = 0  # streams that ended without `done`: client gone, dropped, HTTP 500, shutdown
    faults: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "started": self.started,
            "completed": self.completed,
            "errors": self.errors,
            "aborted": self.aborted,
            "faults": dict(self.faults),
        }


def generate_key() -> str:
    """A random 32-character key, the length Poe's access keys have."""
    return secrets.token_hex(16)


class LocalPoe:
    """A local Poe platform: who may call, which bots exist, how they behave, and what happened."""

    def __init__(
        self,
        api_keys: Iterable[str] | None = None,
        *,
        strict: bool = False,
        knobs: KnobSet | None = None,
        builtin_bots: bool = True,
        max_files: int = DEFAULT_MAX_FILES,
        max_file_bytes: int = DEFAULT_MAX_BYTES,
        max_recorded: int = 200,
        ping_s: float = 15.0,
    ) -> None:
        keys = {k for k in api_keys if k} if api_keys is not None else set()
        # api_keys=None and strict=False: any non-empty key works (dev mode). Otherwise only the keys given,
        # or one generated key when strict mode was asked for without keys.
        self.strict = strict or api_keys is not None
        if self.strict and not keys:
            keys = {generate_key()}
        self._keys = frozenset(keys)
        self.api_key = sorted(keys)[0] if keys else generate_key()
        self.ping_s = ping_s
        self.files = FileStore(max_files, max_file_bytes)
        self.cost_status = "success"  # what cost capture/authorize answer ("success" or anything else = refused)
        self._lock = threading.Lock()
        self._bots: dict[str, RegisteredBot] = {}
        self._knobs = knobs or KnobSet()
        self._drawer = FaultDrawer(self._knobs.seed)
        self._max_recorded = max_recorded
        self._reset_records()
        self._closing: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if builtin_bots:
            self._register_builtins()

    # --- registry -------------------------------------------------------------------------------------------

    def register_bot(self, name: str, handler: BotHandler, *, settings: SettingsResponse | None = None) -> None:
        """Add (or replace) a bot; names are matched case-insensitively, as on Poe."""
        if not name or "/" in name:
            raise ValueError(f"invalid bot name {name!r}")
        with self._lock:
            self._bots[name.lower()] = RegisteredBot(name, handler, settings or SettingsResponse())

    def unregister_bot(self, name: str) -> None:
        """Remove a bot (no error when it is unknown)."""
        with self._lock:
            self._bots.pop(name.lower(), None)

    def get_bot(self, name: str) -> RegisteredBot | None:
        """The registered bot for a name, or None."""
        return self._bots.get(name.lower())

    @property
    def bot_names(self) -> list[str]:
        """Names of all registered bots."""
        return sorted(bot.name for bot in self._bots.values())

    def _register_builtins(self) -> None:
        for name in bots.TEXT_BOT_NAMES:
            self.register_bot(name, bots.meme_writer, settings=bots.WRITER_SETTINGS)
        for name in bots.IMAGE_BOT_NAMES:
            self.register_bot(name, bots.painter_bot, settings=bots.PAINTER_SETTINGS)
        for name in bots.LEGACY_IMAGE_BOT_NAMES:
            self.register_bot(name, bots.legacy_painter_bot, settings=bots.PAINTER_SETTINGS)

    # --- auth -----------------------------------------------------------------------------------------------

    def accepts(self, key: str | None) -> bool:
        """Whether `key` may use the platform."""
        if not key:
            return False
        if not self.strict:
            return True
        return any(hmac.compare_digest(key.encode(), known.encode()) for known in self._keys)

    # --- knobs ----------------------------------------------------------------------------------------------

    @property
    def knobs(self) -> KnobSet:
        """The current knob set (treat as read-only; change it with set_knobs / update_knobs)."""
        return self._knobs

    def set_knobs(self, knobs: KnobSet) -> None:
        """Replace all knobs; a new seed restarts the fault draws."""
        with self._lock:
            if knobs.seed != self._knobs.seed:
                self._drawer = FaultDrawer(knobs.seed)
            self._knobs = knobs

    def update_knobs(self, bot: str | None = None, **fields: Any) -> None:
        """Change some knob fields of the default (bot=None) or of one bot's override."""
        patch = KnobSet(bots={bot: BotKnobs(**fields)}) if bot else KnobSet(default=BotKnobs(**fields))
        self.set_knobs(self._knobs.merged(patch))

    def knobs_for(self, bot: str) -> BotKnobs:
        """Effective knobs of one bot."""
        return self._knobs.for_bot(bot)

    def draw_fault(self, bot: str, knobs: BotKnobs) -> FaultKind | None:
        """Decide whether this call gets a fault, and which."""
        with self._lock:
            return self._drawer.draw(bot, knobs)

    # --- counters and recordings ----------------------------------------------------------------------------

    def _reset_records(self) -> None:
        self._stats: dict[str, BotStats] = {}
        self._unknown_bots: Counter[str] = Counter()
        self._requests: deque[dict[str, Any]] = deque(maxlen=self._max_recorded)
        self._settings: deque[dict[str, Any]] = deque(maxlen=self._max_recorded)
        self._costs: deque[dict[str, Any]] = deque(maxlen=self._max_recorded)
        self._reports: deque[dict[str, Any]] = deque(maxlen=self._max_recorded)
        self._counters: Counter[str] = Counter()

    def reset(self) -> None:
        """Clear counters and recordings and restart the fault draws (knobs, bots and files stay)."""
        with self._lock:
            self._reset_records()
            self._drawer = FaultDrawer(self._knobs.seed)

    def bot_stats(self, bot: str) -> BotStats:
        """The live counters of one bot (created on first use)."""
        with self._lock:
            return self._stats.setdefault(bot, BotStats())

    def count(self, counter: str, by: int = 1) -> None:
        """Bump a platform-wide counter (uploads, unauthorized, ...)."""
        with self._lock:
            self._counters[counter] += by

    def record_query(self, bot: str, body: Mapping[str, Any], *, known: bool, peer: str = "") -> None:
        """Remember a bot query, without its keys, and the connection (client address) it came on."""
        entry = {"bot": bot, "time": time.time(), "peer": peer, "request": strip_secrets(body)}
        with self._lock:
            self._requests.append(entry)
            if not known:
                self._unknown_bots[bot] += 1

    def record_settings(self, bot: str, kind: str, version: str, settings: Any) -> None:
        """Remember a settings sync ("fetch" or "update")."""
        entry = {"bot": bot, "kind": kind, "version": version, "settings": settings, "time": time.time()}
        with self._lock:
            self._settings.append(entry)
            self._counters["settings_syncs"] += 1

    def record_cost(self, bot_query_id: str, action: str, amounts: Any) -> None:
        """Remember a cost capture or authorization."""
        entry = {"bot_query_id": bot_query_id, "action": action, "amounts": amounts, "time": time.time()}
        with self._lock:
            self._costs.append(entry)
            self._counters["cost_calls"] += 1

    def record_report(self, bot: str, body: Mapping[str, Any]) -> None:
        """Remember a report_error / report_feedback / report_reaction sent by a client."""
        with self._lock:
            self._reports.append({"bot": bot, "time": time.time(), "request": strip_secrets(body)})
            self._counters["reports"] += 1

    def requests(self, bot: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent recorded queries, oldest first, optionally for one bot."""
        with self._lock:
            entries = [e for e in self._requests if bot is None or e["bot"].lower() == bot.lower()]
        return entries[-limit:] if limit > 0 else []

    def settings_syncs(self, bot: str | None = None) -> list[dict[str, Any]]:
        """Recorded settings syncs, oldest first."""
        with self._lock:
            return [e for e in self._settings if bot is None or e["bot"] == bot]

    def last_settings(self, bot: str) -> dict[str, Any] | None:
        """The last settings sync for a bot, or None."""
        syncs = self.settings_syncs(bot)
        return syncs[-1] if syncs else None

    def cost_calls(self) -> list[dict[str, Any]]:
        """Recorded cost calls, oldest first."""
        with self._lock:
            return list(self._costs)

    def reports(self) -> list[dict[str, Any]]:
        """Recorded client reports, oldest first."""
        with self._lock:
            return list(self._reports)

    def stats(self) -> dict[str, Any]:
        """All counters as JSON."""
        with self._lock:
            return {
                "bots": {name: s.as_dict() for name, s in sorted(self._stats.items())},
                "unknown_bots": dict(self._unknown_bots),
                "uploads": self._counters["uploads"],
                "upload_bytes": self._counters["upload_bytes"],
                "settings_syncs": self._counters["settings_syncs"],
                "cost_calls": self._counters["cost_calls"],
                "reports": self._counters["reports"],
                "unauthorized": self._counters["unauthorized"],
                "files_stored": self.files.count,
                "file_bytes": self.files.total_bytes,
            }

    # --- lifecycle ------------------------------------------------------------------------------------------

    def attach(self) -> None:
        """Bind to the running event loop (called at app start-up)."""
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()

    def detach(self) -> None:
        """Unbind from the event loop (called at app shutdown)."""
        self._loop, self._closing = None, None

    def begin_close(self) -> None:
        """Wake every waiting stream so shutdown is quick; safe to call from any thread."""
        loop, closing = self._loop, self._closing
        if loop is None or closing is None or loop.is_closed():
            return
        try:
            if asyncio.get_running_loop() is loop:
                closing.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(closing.set)

    @property
    def closing(self) -> bool:
        """Whether shutdown has begun."""
        return self._closing is not None and self._closing.is_set()

    async def sleep(self, seconds: float) -> None:
        """Sleep like asyncio.sleep, but raise PlatformClosing as soon as the server shuts down."""
        closing = self._closing
        if closing is None or self._loop is not asyncio.get_running_loop():
            await asyncio.sleep(max(0.0, seconds))
            return
        if closing.is_set():
            raise PlatformClosing
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await closing.wait()
        except TimeoutError:
            return
        raise PlatformClosing


def strip_secrets(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a request body without key fields."""
    return {k: v for k, v in body.items() if k not in _SECRET_FIELDS}
