"""The bot's configuration, from the environment (names fixed in shared/DESIGN.md)."""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from chains.chat_poe import DEFAULT_TEXT_BOT
from chains.image_poe import DEFAULT_IMAGE_BOT

ACCESS_KEY_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{32}$")
DEFAULT_FALLBACK_IMAGE_BOT: Final = "Imagen-3"


class ConfigError(Exception):
    """The bot's configuration is missing or wrong; the message says how to fix it."""


def _on_off(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in ("on", "off"):
        return value.strip().lower() == "on"
    return value


OnOff = Annotated[bool, BeforeValidator(_on_off)]


class BotConfig(BaseSettings):
    """Everything the bot reads from its environment."""

    access_key: SecretStr | None = Field(default=None, validation_alias="POE_ACCESS_KEY")
    api_key: SecretStr | None = Field(default=None, validation_alias="POE_API_KEY")
    text_bot: str = Field(default=DEFAULT_TEXT_BOT, validation_alias="MEMEBOT_TEXT_BOT")
    image_bot: str = Field(default=DEFAULT_IMAGE_BOT, validation_alias="MEMEBOT_IMAGE_BOT")
    vision_bot: str = Field(default=DEFAULT_TEXT_BOT, validation_alias="MEMEBOT_VISION_BOT")
    fallback_image_bot: str | None = Field(
        default=DEFAULT_FALLBACK_IMAGE_BOT, validation_alias="MEMEBOT_FALLBACK_IMAGE_BOT"
    )
    caption_overlay: OnOff = Field(default=True, validation_alias="MEMEBOT_CAPTION_OVERLAY")
    text_timeout_s: float = Field(default=45.0, gt=0, le=110, validation_alias="MEMEBOT_TEXT_TIMEOUT_S")
    image_timeout_s: float = Field(default=60.0, gt=0, le=110, validation_alias="MEMEBOT_IMAGE_TIMEOUT_S")
    max_retries: int = Field(default=2, ge=0, le=5, validation_alias="MEMEBOT_MAX_RETRIES")
    poe_url: str | None = Field(default=None, validation_alias="MEMEBOT_POE_URL")
    bot_name: str | None = Field(default=None, validation_alias=AliasChoices("MEMEBOT_BOT_NAME", "POE_BOT_NAME"))
    trace_file: str | None = Field(default=None, validation_alias="MEMEBOT_TRACE_FILE")

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    def checked_access_key(self) -> str:
        """The bot's access key, or a ConfigError saying what is wrong with it (never echoing it)."""
        if self.access_key is None or not self.access_key.get_secret_value().strip():
            raise ConfigError(
                "POE_ACCESS_KEY is not set. Copy the 32-character access key from your bot's page on Poe "
                "(Edit bot -> Server bot settings) and export POE_ACCESS_KEY=... before starting the server."
            )
        key = self.access_key.get_secret_value().strip()
        if not ACCESS_KEY_PATTERN.match(key):
            raise ConfigError(
                f"POE_ACCESS_KEY is malformed: Poe access keys are 32 letters and digits, this one has "
                f"{len(key)} characters. Copy it again from your bot's settings page on Poe."
            )
        return key
