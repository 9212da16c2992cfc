"""Engine overhead per message: scripted backend + real Redis (memory load + save + feedback record).

    .venv/bin/python bench/engine_overhead.py [--messages 2000] [--concurrency 32]

Compares, in one run, the engine's per-message latency with the bare Redis round trip (PING) on the
same connection pool, so the ratio is meaningful on a noisy machine. Appends a section to BENCHMARKS.md
with --record.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, percentile, record_section  # noqa: E402
from bot.app import build_runtime  # noqa: E402
from bot.domain.messages import ChatRequest, Speaker  # noqa: E402
from bot.redis_conn import EmbeddedRedis  # noqa: E402
from bot.settings import Settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402


async def measure(messages: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", port=free_port())
        url = server.start()
        settings = Settings(
            data_dir=Path(tmp),
            personas_dir=REPO / "personas",
            redis={"url": url},
            model={"backend": "scripted"},
            _env_file=None,
        )  # type: ignore[call-arg]
        try:
            async with build_runtime(settings) as rt:
                client = rt.redis.client
                for _ in range(200):  # warm the pool and the code paths
                    await client.ping()
                    await rt.engine.reply(ChatRequest("warm", Speaker("u", "U"), "warm up"))
                ping = []
                for _ in range(messages):
                    t = time.perf_counter()
                    await client.ping()
                    ping.append(time.perf_counter() - t)
                latency = []
                t0 = time.perf_counter()
                for i in range(messages):
                    t = time.perf_counter()
                    await rt.engine.reply(ChatRequest(f"c{i % 50}", Speaker(f"u{i % 50}", "U"), f"message {i}"))
                    latency.append(time.perf_counter() - t)
                sequential_rate = messages / (time.perf_counter() - t0)

                async def worker(w: int) -> None:
                    for i in range(messages // concurrency):
                        await rt.engine.reply(ChatRequest(f"w{w}", Speaker(f"w{w}", "W"), f"message {i}"))

                t0 = time.perf_counter()
                await asyncio.gather(*(worker(w) for w in range(concurrency)))
                concurrent_rate = (messages // concurrency * concurrency) / (time.perf_counter() - t0)
        finally:
            server.stop()
    return {
        "ping_p50_ms": statistics.median(ping) * 1e3,
        "p50_ms": statistics.median(latency) * 1e3,
        "p99_ms": percentile(latency, 99) * 1e3,
        "sequential_msgs_s": sequential_rate,
        "concurrent_msgs_s": concurrent_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    args = parser.parse_args()
    r = asyncio.run(measure(args.messages, args.concurrency))
    table = "\n".join(
        [
            "| measure | value |",
            "|---|---|",
            f"| bare Redis round trip (PING) p50 | {r['ping_p50_ms']:.3f} ms |",
            f"| engine message p50 | {r['p50_ms']:.3f} ms ({r['p50_ms'] / r['ping_p50_ms']:.1f}× PING) |",
            f"| engine message p99 | {r['p99_ms']:.3f} ms |",
            f"| messages/s, one at a time | {r['sequential_msgs_s']:.0f} |",
            f"| messages/s, {args.concurrency} conversations at once | {r['concurrent_msgs_s']:.0f} |",
        ]
    )
    print(table)
    if args.record:
        record_section(
            f"Engine overhead ({args.messages} messages, scripted backend, real Redis)",
            f"{machine_line()}\n\nCommand: `.venv/bin/python bench/engine_overhead.py --messages "
            f"{args.messages} --concurrency {args.concurrency} --record`\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
