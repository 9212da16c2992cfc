"""Which persona speaks where: choices per server, channel and thread (stored behind the
PlacementStore port). The most specific choice wins: thread, then channel, then server; without
any, the default persona speaks.
"""

from __future__ import annotations

import enum

from bot.ports import PlacementStore, PlaceRef
from bot.transports.discord.places import Place


class Scope(enum.StrEnum):
    THREAD = "thread"
    CHANNEL = "channel"
    SERVER = "server"


class PersonaPlacements:
    def __init__(self, store: PlacementStore) -> None:
        self.store = store

    @staticmethod
    def chain(place: Place) -> list[tuple[Scope, int]]:
        """The scopes that apply to `place`, most specific first."""
        chain: list[tuple[Scope, int]] = []
        if place.thread_id is not None:
            chain.append((Scope.THREAD, place.thread_id))
        chain.append((Scope.CHANNEL, place.channel_id))
        if place.guild_id is not None:
            chain.append((Scope.SERVER, place.guild_id))
        return chain

    async def resolve(self, place: Place) -> tuple[str, Scope] | None:
        """The persona chosen for `place` and where it was chosen, or None (use the default)."""
        refs: list[PlaceRef] = [(scope.value, place_id) for scope, place_id in self.chain(place)]
        found = await self.store.lookup(refs)
        return None if found is None else (found[0], Scope(found[1][0]))

    async def set(self, scope: Scope, place_id: int, persona_id: str) -> None:
        await self.store.choose((scope.value, place_id), persona_id)

    async def clear(self, scope: Scope, place_id: int) -> bool:
        """Remove a choice; True when there was one."""
        return await self.store.clear((scope.value, place_id))
