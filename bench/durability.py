"""Durability under faults: a real redis-server killed (or stopped) while users chat and rate.

    .venv/bin/python bench/durability.py [--users 20] [--messages 12] [--fault kill|stop] [--record]

Users send messages (scripted backend) and rate replies with reactions on their messages, all at once,
in three phases: Redis up, Redis down (SIGKILL, or SIGSTOP: a stall), Redis back. Afterwards it
counts replies shown vs recorded, ratings given vs stored (the latest per user and reply), and
duplicates (counters vs what was acknowledged), and times a message with Redis up and during the
outage (journaled, fsync'd), and how fast the journal replays. Appends to BENCHMARKS.md with --record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, percentile, record_section  # noqa: E402
from bot.app import Runtime, build_runtime  # noqa: E402
from bot.domain.messages import ChatRequest, Speaker  # noqa: E402
from bot.redis_conn import EmbeddedRedis  # noqa: E402
from bot.settings import Settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402


class Load:
    def __init__(self, rt: Runtime, users: int) -> None:
        self.rt = rt
        self.users = users
        self.replies: list[str] = []
        self.ratings: dict[tuple[str, str], int] = {}
        self.said: dict[str, list[str]] = defaultdict(list)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.events = 0

    async def user(self, u: int, messages: int, phase: str) -> None:
        rng = random.Random(f"{u}{phase}")
        for i in range(messages):
            text = f"user{u} {phase} {i}"
            started = time.perf_counter()
            finished = await self.rt.engine.reply(ChatRequest(f"conv{u}", Speaker(f"user{u}", "U"), text))
            await self.rt.engine.link_shown(finished.reply_id, [f"msg:{finished.reply_id}"])
            self.latency[phase].append(time.perf_counter() - started)
            self.replies.append(finished.reply_id)
            self.said[f"conv{u}"].append(text)
            target, value = rng.choice(self.replies), rng.choice((1, -1))
            await self.rt.engine.rate_message(f"msg:{target}", f"user{u}", value)
            self.ratings[(target, f"user{u}")] = value
            self.events += 1

    async def phase(self, name: str, messages: int) -> None:
        await asyncio.gather(*(self.user(u, messages, name) for u in range(self.users)))

    async def count(self) -> dict[str, int]:
        rt = self.rt
        missing = sum([await rt.feedback.get(r) is None for r in self.replies])
        stored: dict[tuple[str, str], int] = {}
        for reply in set(self.replies):
            for user, value in (await rt.feedback.ratings(reply)).items():
                stored[(reply, user)] = value
        lost = sum(1 for key, value in self.ratings.items() if stored.get(key) != value)
        [counters] = (await rt.feedback.stats()).values()
        expected_up = sum(1 for v in self.ratings.values() if v == 1)
        expected_down = len(self.ratings) - expected_up
        duplicates = (counters["replies"] - len(self.replies)) + abs(counters.get("up", 0) - expected_up) + abs(
            counters.get("down", 0) - expected_down
        )
        turns = 0
        for conversation, texts in self.said.items():
            kept = [t.content for t in await rt.memory.load(conversation, 100) if t.role == "user"]
            turns += int(kept != texts[-len(kept):] or len(kept) != min(len(texts), 10))
        return {"replies": len(self.replies), "missing": missing, "ratings": len(self.ratings), "lost": lost,
                "duplicates": duplicates, "bad_memories": turns}  # fmt: skip


async def measure(users: int, messages: int, fault: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", port=free_port())
        url = server.start()
        settings = Settings(
            data_dir=Path(tmp) / "data",
            personas_dir=REPO / "personas",
            redis={"url": url, "socket_timeout": 0.5},
            journal={"retry_max_s": 0.2},
            model={"backend": "scripted"},
            _env_file=None,
        )  # type: ignore[call-arg]
        try:
            async with build_runtime(settings) as rt:
                assert rt.replayer is not None and rt.journal is not None
                load = Load(rt, users)
                await load.phase("up", messages // 3)
                pid = server.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
                await load.phase("down", messages // 3)
                pending, _ = await rt.journal.count()
                healed = time.perf_counter()
                if fault == "kill":
                    server.start()
                else:
                    os.kill(pid, signal.SIGCONT)
                back = asyncio.create_task(load.phase("back", messages - 2 * (messages // 3)))
                async with asyncio.timeout(300):
                    await rt.replayer.settled()
                replay_s = time.perf_counter() - healed
                await back
                async with asyncio.timeout(300):
                    await rt.replayer.settled()
                counts = await load.count()
        finally:
            server.stop()
    return {
        **counts,
        "journaled": pending,
        "replay_s": replay_s,
        "up_p50_ms": statistics.median(load.latency["up"]) * 1e3,
        "down_p50_ms": statistics.median(load.latency["down"]) * 1e3,
        "down_p95_ms": percentile(load.latency["down"], 95) * 1e3,
        "back_p50_ms": statistics.median(load.latency["back"]) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--messages", type=int, default=9, help="per user, over the three phases (≤ 10 keeps memory)")
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    for fault in ("kill", "stop"):
        r = asyncio.run(measure(args.users, args.messages, fault))
        rows.append(
            f"| {'SIGKILL, restart' if fault == 'kill' else 'SIGSTOP, resume'} | {r['replies']:.0f} / "
            f"{r['missing']:.0f} | {r['ratings']:.0f} / {r['lost']:.0f} | {r['duplicates']:.0f} | "
            f"{r['bad_memories']:.0f} | {r['up_p50_ms']:.1f} ms | {r['down_p50_ms']:.1f} ms "
            f"(p95 {r['down_p95_ms']:.0f}) | {r['back_p50_ms']:.1f} ms | {r['journaled']:.0f} in "
            f"{r['replay_s']:.2f} s |"
        )
    table = "\n".join(
        [
            "| fault | replies shown / not recorded | ratings given / lost | duplicates | conversations "
            "with a wrong memory | message p50, Redis up | during the outage | after | journaled writes "
            "replayed in |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.record:
        record_section(
            f"Durability under Redis faults ({args.users} users × {args.messages} messages, scripted backend)",
            f"{machine_line()}\n\nCommand: `.venv/bin/python bench/durability.py --users {args.users} --messages "
            f"{args.messages} --record`\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
