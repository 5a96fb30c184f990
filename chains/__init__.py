"""The meme pipeline as LangChain Runnables: Poe bots as chat models and image generators, and the meme chain."""

from chains.chat_poe import ChatPoe
from chains.draft import MemeDraft, MemeDraftParser, PartialMemeDraft
from chains.errors import PoeAuthError, PoeBotError, PoeError, PoeNoImage, PoeRateLimited, PoeTimeout
from chains.image_poe import GeneratedImage, PoeImageGenerator
from chains.meme import Meme, MemeProgress, build_meme_chain

__all__ = [
    "ChatPoe",
    "GeneratedImage",
    "Meme",
    "MemeDraft",
    "MemeDraftParser",
    "MemeProgress",
    "PartialMemeDraft",
    "PoeAuthError",
    "PoeBotError",
    "PoeError",
    "PoeImageGenerator",
    "PoeNoImage",
    "PoeRateLimited",
    "PoeTimeout",
    "build_meme_chain",
]
