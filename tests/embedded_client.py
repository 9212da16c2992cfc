"""A bot process in miniature, for the embedded-Redis tests: use the server of a directory until told to leave.

    python -m tests.embedded_client DIR   prints "ready <server pid>", writes key "written-by" = its own
                                          pid, waits for a line on stdin, releases the server and prints
                                          "stopped" or "left running"
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import redis

from bot.redis_server import EmbeddedRedis


def main() -> None:
    server = EmbeddedRedis(Path(sys.argv[1]))
    url = server.start()
    client = redis.Redis.from_url(url)
    client.set("written-by", os.getpid())
    client.close()
    print("ready", server.pid, flush=True)
    sys.stdin.readline()
    print("stopped" if server.release() else "left running", flush=True)


if __name__ == "__main__":
    main()
