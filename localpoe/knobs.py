"""Latency and fault-injection knobs, per bot and by default, with deterministic fault draws."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FaultKind(StrEnum):
    """The faults localpoe can inject into a bot call."""

    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    GARBAGE = "garbage"
    TRUNCATED = "truncated"
    STALL = "stall"
    HTTP_500 = "http_500"
    DROP = "drop"


class BotKnobs(BaseModel):
    """How one bot behaves: pacing and the faults it injects."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    first_token_delay_s: float = Field(default=0.0, ge=0.0, description="Delay before the first content event.")
    tokens_per_second: float = Field(default=0.0, ge=0.0, description="Text events per second; 0 = instant.")
    image_delay_s: float = Field(default=0.0, ge=0.0, description="A file event comes no earlier than this.")
    fault_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of calls that get a fault.")
    fault_kinds: list[FaultKind] = Field(
        default_factory=lambda: [FaultKind.ERROR], description="Faults drawn from, uniformly."
    )
    stall_s: float = Field(default=300.0, ge=0.0, description="How long a 'stall' fault holds the stream.")


class KnobSet(BaseModel):
    """All knobs of a platform: a default, per-bot overrides (only the fields they set) and the fault seed."""

    model_config = ConfigDict(extra="forbid")

    default: BotKnobs = Field(default_factory=BotKnobs)
    bots: dict[str, BotKnobs] = Field(default_factory=dict)
    seed: int = 0

    def for_bot(self, bot: str) -> BotKnobs:
        """The effective knobs of `bot`: the default updated with the fields its override sets."""
        override = self._override(bot)
        if override is None:
            return self.default
        return self.default.model_copy(update=override.model_dump(exclude_unset=True))

    def merged(self, patch: KnobSet) -> KnobSet:
        """This set with `patch` applied field by field (a merge, as HTTP PATCH does)."""
        default = self.default.model_copy(update=patch.default.model_dump(exclude_unset=True))
        bots = {name: knobs.model_copy() for name, knobs in self.bots.items()}
        for name, knobs in patch.bots.items():
            current = bots.get(name)
            changes = knobs.model_dump(exclude_unset=True)
            kept = {} if current is None else current.model_dump(exclude_unset=True)
            bots[name] = BotKnobs(**{**kept, **changes})
        seed = patch.seed if "seed" in patch.model_fields_set else self.seed
        return KnobSet(default=default, bots=bots, seed=seed)

    def public(self) -> dict[str, Any]:
        """JSON form: the full default, each override with only the fields it sets."""
        return {
            "default": self.default.model_dump(mode="json"),
            "bots": {name: knobs.model_dump(mode="json", exclude_unset=True) for name, knobs in self.bots.items()},
            "seed": self.seed,
        }

    def _override(self, bot: str) -> BotKnobs | None:
        if bot in self.bots:
            return self.bots[bot]
        lowered = bot.lower()  # bot names are case-insensitive on Poe
        return next((k for name, k in self.bots.items() if name.lower() == lowered), None)

    @classmethod
    def realistic(cls, seed: int = 0) -> KnobSet:
        """A profile that feels like real Poe bots: a pause, ~40 tokens/s, images in ~3 s."""
        return cls(default=BotKnobs(first_token_delay_s=0.4, tokens_per_second=40.0, image_delay_s=3.0), seed=seed)


class FaultDrawer:
    """Draws faults with one random.Random per bot, seeded from (seed, bot): deterministic per bot."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._rngs: dict[str, random.Random] = {}

    def draw(self, bot: str, knobs: BotKnobs) -> FaultKind | None:
        """One draw: a fault kind for this call, or None."""
        if knobs.fault_rate <= 0.0 or not knobs.fault_kinds:
            return None
        rng = self._rngs.get(bot)
        if rng is None:
            rng = self._rngs[bot] = random.Random(f"{self._seed}:{bot.lower()}")
        # Draw both numbers every time so the sequence does not depend on the outcome.
        roll, pick = rng.random(), rng.randrange(len(knobs.fault_kinds))
        return knobs.fault_kinds[pick] if roll < knobs.fault_rate else None


_KNOB_FIELDS = tuple(BotKnobs.model_fields)


def knobs_from_cli(assignments: Iterable[str] = (), *, seed: int = 0, realistic: bool = False) -> KnobSet:
    """Build a KnobSet from `[BOT.]FIELD=VALUE` strings, e.g. `fault_rate=0.2`, `FLUX-dev.image_delay_s=4`.

    `fault_kinds` takes a comma-separated list (`fault_kinds=error,stall`). Raises ValueError on a bad one.
    """
    default: dict[str, Any] = {}
    bots: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep:
            raise ValueError(f"knob {assignment!r} is not FIELD=VALUE")
        bot, _, field = key.strip().rpartition(".")
        if field not in _KNOB_FIELDS:
            raise ValueError(f"unknown knob {field!r}; known: {', '.join(_KNOB_FIELDS)}")
        value: Any = [part.strip() for part in raw.split(",") if part.strip()] if field == "fault_kinds" else raw
        (bots.setdefault(bot, {}) if bot else default)[field] = value
    base = KnobSet.realistic(seed) if realistic else KnobSet(seed=seed)
    patch = KnobSet(default=BotKnobs.model_validate(default), bots=_validate_bots(bots), seed=seed)
    return base.merged(patch)


def _validate_bots(bots: Mapping[str, Mapping[str, Any]]) -> dict[str, BotKnobs]:
    return {name: BotKnobs.model_validate(dict(values)) for name, values in bots.items()}
