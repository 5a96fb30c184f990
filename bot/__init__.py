"""The Poe-facing side of the meme bot: configuration, reading conversations, formatting replies."""
