"""A fake Discord (REST + gateway) on 127.0.0.1 for end-to-end tests of a real discord.py client."""

from .server import FakeDiscord
from .world import Failure, Gate, Guild, Reaction, Recorded, SentMessage

__all__ = ["Failure", "FakeDiscord", "Gate", "Guild", "Reaction", "Recorded", "SentMessage"]
