"""Nothing a user does is lost: writes that Redis cannot take go to a durable local journal and are
replayed, in order and idempotently, when it answers again.

    journal = await SqliteJournal.open(path, max_bytes=...)   # the Journal port, on disk
    stores = JournaledStores(memory, feedback, journal)       # the engine's door to its stores
    replayer = Replayer(stores, journal, redis.server_id)     # run() as a supervised task
"""

from bot.journal.replayer import Replayer
from bot.journal.sqlite import SqliteJournal
from bot.journal.stores import JournaledStores

__all__ = ["JournaledStores", "Replayer", "SqliteJournal"]
