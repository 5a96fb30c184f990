"""The Poe parameter controls the bot offers, and how the user's choices reach the chain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import fastapi_poe as fp

TEXT_BOTS: Final = ("GPT-4o-Mini", "GPT-4o", "Claude-Sonnet-4", "Claude-3-Haiku", "Gemini-2.0-Flash", "Mistral-Large-2")
VISION_BOTS: Final = frozenset({"GPT-4o-Mini", "GPT-4o", "Claude-Sonnet-4", "Claude-3-Haiku", "Gemini-2.0-Flash"})
"""Text bots that can see an attached photo; others hand photo memes to the configured vision bot."""
IMAGE_BOTS: Final = ("FLUX-schnell", "FLUX-dev", "Imagen-3", "Playground-v3", "DALL-E-3", "Ideogram-v2")
ASPECT_RATIOS: Final = {"1:1": (1, 1), "16:9": (16, 9), "9:16": (9, 16), "4:3": (4, 3)}
STYLES: Final = ("auto", "photo", "cartoon", "pixel art", "oil painting", "anime", "3D render")


@dataclass(frozen=True)
class Choices:
    """What the user picked for this message (only valid values survive)."""

    text_bot: str
    image_bot: str
    aspect_ratio: str | None
    caption: bool
    style: str | None

    def configurable(self) -> dict[str, Any]:
        chosen: dict[str, Any] = {
            "text_bot": self.text_bot,
            "image_bot": self.image_bot,
            "caption_overlay": self.caption,
        }
        if self.aspect_ratio:
            chosen["aspect_ratio"] = self.aspect_ratio
        return chosen


def read_choices(message: fp.ProtocolMessage | None, *, text_bot: str, image_bot: str, caption: bool) -> Choices:
    """The user's choices from the message's parameters, falling back to the bot's configuration."""
    parameters = message.parameters if message is not None else {}
    chosen_text = parameters.get("text_bot")
    chosen_image = parameters.get("image_bot")
    aspect = parameters.get("aspect_ratio")
    style = parameters.get("style")
    chosen_caption = parameters.get("caption")
    return Choices(
        text_bot=chosen_text if chosen_text in (*TEXT_BOTS, text_bot) else text_bot,
        image_bot=chosen_image if chosen_image in (*IMAGE_BOTS, image_bot) else image_bot,
        aspect_ratio=aspect if aspect in ASPECT_RATIOS else None,
        caption=chosen_caption if isinstance(chosen_caption, bool) else caption,
        style=style if style in STYLES and style != "auto" else None,
    )


def parameter_controls(*, text_bot: str, image_bot: str, caption: bool) -> fp.ParameterControls:
    """Dropdowns for the bots and the style, an aspect-ratio picker and a caption toggle."""

    def options(names: tuple[str, ...], default: str) -> list[fp.ValueNamePair]:
        return [fp.ValueNamePair(value=name, name=name) for name in dict.fromkeys((default, *names))]

    controls: list[Any] = [
        fp.DropDown(
            label="Writer",
            parameter_name="text_bot",
            default_value=text_bot,
            options=options(TEXT_BOTS, text_bot),
        ),
        fp.DropDown(
            label="Painter",
            parameter_name="image_bot",
            default_value=image_bot,
            options=options(IMAGE_BOTS, image_bot),
        ),
        fp.DropDown(
            label="Art style",
            parameter_name="style",
            default_value="auto",
            options=[fp.ValueNamePair(value=s, name=s.capitalize()) for s in STYLES],
        ),
        fp.AspectRatio(
            label="Aspect ratio",
            parameter_name="aspect_ratio",
            default_value="1:1",
            options=[fp.AspectRatioOption(value=v, width=w, height=h) for v, (w, h) in ASPECT_RATIOS.items()],
        ),
        fp.ToggleSwitch(label="Caption on the picture", parameter_name="caption", default_value=caption),
    ]
    return fp.ParameterControls(sections=[fp.Section(name="Meme", controls=controls)])
