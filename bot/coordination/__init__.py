"""State the Discord transport shares between bot processes, behind the ports in `bot.ports`.

    claims.py      MessageClaims: handle each Discord message once (retry-safe: a token per attempt)
    pacing.py      UserPacing: per-user cooldowns judged by when messages were sent, as a schedule
    slots.py       ReplySlots: leases on concurrent model calls, in total and per server
    placements.py  PlacementStore: which persona speaks in which server, channel or thread
    fallback.py    Redis first, within a deadline; this process's own state while Redis is away

Each module has a Redis implementation (shared by every process on one Redis) and, where the
transport must keep answering without Redis, a local one. `bot.app.build_discord_state` wires
them. Nothing outside this package and the stores touches redis-py.
"""
