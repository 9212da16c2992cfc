"""A fake Discord (REST + gateway) on 127.0.0.1 for end-to-end tests of a real discord.py client."""

from .server import FakeDiscord
from .world import Guild, Reaction, Recorded, SentMessage

__all__ = ["FakeDiscord", "Guild", "Reaction", "Recorded", "SentMessage"]
