"""The Discord bot under load: does every message get answered exactly once, and how fast?

    .venv/bin/python bench/discord_load.py [--messages 500 --users 50 --channels 5 --seconds 30]
                                           [--burst 10] [--slow-messages 60 --slow-reply-s 3] [--record]

Runs the real bot as an operator does (`python -m bot discord`, a separate process) against the
test fake Discord (tests/discord_fake) and a scripted OpenAI-compatible streaming server, both on
127.0.0.1 in this process, with a real redis-server. Three scenarios, each bounded in count and time:

1. load: `--messages` mentions from `--users` users in `--channels` channels of one server, at
   random times over `--seconds` (seeded), with a fast model;
2. burst: `--burst` users mention the bot at the same moment in one channel;
3. slow: a slow model (`--slow-reply-s` per reply) and `--slow-messages` mentions over 10 s in 2
   channels, with max_wait_s=`--slow-max-wait`: what cannot be answered in time must be given up
   visibly (a notice saying why), never silently.

For each message: answered once (one reply, complete), twice or more, given up with a reason,
or never (nothing, or a notice left hanging); the time from sending it to the last edit of its
reply. Everything else is the bot's default settings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, percentile, record_section  # noqa: E402
from bot.redis_conn import EmbeddedRedis  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.discord_fake import FakeDiscord  # noqa: E402
from tests.discord_fake.openai_server import DONE, ScriptedOpenAI  # noqa: E402
from tests.discord_fake.payloads import Json  # noqa: E402
from tests.discord_fake.process import bot_env, running_bots  # noqa: E402

START_S = 120.0


@dataclass
class Sent:
    message: Json
    at: float  # monotonic, when dispatched


@dataclass
class Result:
    name: str
    sent: int
    once: int = 0
    twice: int = 0
    given_up: int = 0
    never: int = 0
    notices: int = 0
    latencies: list[float] = field(default_factory=list)
    beyond_cooldown: list[float] = field(default_factory=list)  # latency minus the user's cooldown hold
    wall_s: float = 0.0
    bot_cpu_s: float = 0.0  # CPU time the bot process used, all of it (start-up included)

    def row(self) -> str:
        p50 = f"{percentile(self.latencies, 50):.2f} s" if self.latencies else "-"
        p95 = f"{percentile(self.latencies, 95):.2f} s" if self.latencies else "-"
        own = f"{percentile(self.beyond_cooldown, 95):.2f} s" if self.beyond_cooldown else "-"
        return (f"| {self.name} | {self.sent} | **{self.once}** | {self.twice} | {self.given_up} | {self.never} | "
                f"{self.notices} | {p50} | {p95} | {own} | {self.bot_cpu_s:.1f} s |")  # fmt: skip


HEADER = (
    "| scenario | sent | answered once | twice+ | given up (said why) | never | wait notices | p50 to final reply "
    "| p95 | p95 less cooldown hold | bot CPU |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def cooldown_holds(sent: list[Sent], cooldown_s: float) -> dict[int, float]:
    """How long each message is held back by its user's cooldown (the bot's pacing, replayed)."""
    last: dict[str, float] = {}
    holds = {}
    for item in sent:
        user = item.message["author"]["id"]
        slot = item.at if user not in last else max(item.at, last[user] + cooldown_s)
        last[user] = slot
        holds[int(item.message["id"])] = slot - item.at
    return holds


def classify(fake: FakeDiscord, sent: list[Sent], name: str, cooldown_s: float = 2.0) -> Result:
    result = Result(name, len(sent))
    holds = cooldown_holds(sent, cooldown_s)
    for item in sent:
        answers = [m for m in fake.sent if m.reference_id == int(item.message["id"]) and not m.deleted]
        done = [m for m in answers if m.content.endswith(DONE)]
        result.notices += sum(1 for m in answers if "in line" in m.contents[0])
        if len(done) == 1:
            result.once += 1
            result.latencies.append(done[0].times[-1] - item.at)
            result.beyond_cooldown.append(result.latencies[-1] - holds[int(item.message["id"])])
        elif len(done) > 1:
            result.twice += 1
        elif any(m.content.startswith("-# ") and "in line" not in m.content for m in answers):
            result.given_up += 1
        else:
            result.never += 1
    return result


def resolved(fake: FakeDiscord, sent: list[Sent]) -> bool:
    def settled(item: Sent) -> bool:
        answers = [m for m in fake.sent if m.reference_id == int(item.message["id"]) and not m.deleted]
        return any(m.content.endswith(DONE) or (m.content.startswith("-# ") and "in line" not in m.content)
                   for m in answers)  # fmt: skip

    return all(settled(item) for item in sent)


async def scenario(
    name: str, *, schedule: list[tuple[float, int, int]], users: int, channels: int, tmp: Path, redis_url: str,
    model: ScriptedOpenAI, settle_s: float, **discord: object,
) -> Result:  # fmt: skip
    """Send mentions at `schedule` [(seconds from start, user index, channel index)] to a fresh bot."""
    fake = FakeDiscord()
    guild = fake.add_guild("load test")
    rooms = [fake.add_channel(guild, f"room-{i}") for i in range(channels)]
    people = [fake.add_user(f"user{i}") for i in range(users)]
    for person in people:
        fake.join(guild, person)
    personas = tmp / name / "personas"
    personas.mkdir(parents=True)
    shutil.copy(REPO / "personas" / "assistant.yaml", personas)
    await fake.start()
    env = bot_env(fake, redis_url=redis_url, model_url=model.url, personas_dir=personas, data_dir=tmp / name,
                  **discord)  # fmt: skip
    env["BOT_REDIS__KEY_PREFIX"] = f"bench-{name}"
    env["BOT_LOG_LEVEL"] = "WARNING"
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        async with running_bots([env], tmp / name) as [bot]:
            await fake.wait_until(lambda: fake.live_shards() == {0}, within=START_S)
            warm = fake.user_message(people[0], rooms[0], "warm up", mention_bot=True)
            await fake.dispatch_message(warm)
            await fake.wait_until(lambda: resolved(fake, [Sent(warm, 0.0)]), within=START_S)
            requests_before = model.requests
            sent = await send(fake, schedule, people, rooms)
            last = sent[-1].at if sent else time.monotonic()
            try:
                await fake.wait_until(lambda: resolved(fake, sent), within=settle_s)
            except TimeoutError:
                print(f"{name}: not everything settled within {settle_s:.0f} s", file=sys.stderr)
            result = classify(fake, sent, name)
            result.wall_s = time.monotonic() - (sent[0].at if sent else last)
            print(f"{name}: {result.once} once, {result.twice} twice+, {result.given_up} given up, "
                  f"{result.never} never; {model.requests - requests_before} model calls", file=sys.stderr)  # fmt: skip
            if result.never or result.twice:
                print(bot.log()[-4000:], file=sys.stderr)
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        result.bot_cpu_s = cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
        return result
    finally:
        await fake.close()


async def send(
    fake: FakeDiscord, schedule: list[tuple[float, int, int]], people: list[Json], rooms: list[Json]
) -> list[Sent]:
    start = time.monotonic()
    sent: list[Sent] = []
    for n, (offset, user, room) in enumerate(sorted(schedule)):
        delay = start + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        message = fake.user_message(people[user], rooms[room], f"question {n}", mention_bot=True)
        sent.append(Sent(message, time.monotonic()))
        await fake.dispatch_message(message)
    return sent


async def main(args: argparse.Namespace) -> list[Result]:
    rng = random.Random(args.seed)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis = EmbeddedRedis(tmp / "redis", port=free_port())
        redis_url = redis.start()
        fast = ScriptedOpenAI(pieces=4, reply_s=0.08)
        slow = ScriptedOpenAI(pieces=10, reply_s=args.slow_reply_s)
        await fast.start()
        await slow.start()
        try:
            load = [(rng.uniform(0, args.seconds), rng.randrange(args.users), rng.randrange(args.channels))
                    for _ in range(args.messages)]  # fmt: skip
            results.append(await scenario("load", schedule=load, users=args.users, channels=args.channels, tmp=tmp,
                                          redis_url=redis_url, model=fast, settle_s=120))  # fmt: skip
            burst = [(0.0, i, 0) for i in range(args.burst)]
            results.append(await scenario("burst", schedule=burst, users=args.burst, channels=1, tmp=tmp,
                                          redis_url=redis_url, model=fast, settle_s=60))  # fmt: skip
            slow_load = [(rng.uniform(0, 10), rng.randrange(20), rng.randrange(2)) for _ in range(args.slow_messages)]
            results.append(await scenario("slow", schedule=slow_load, users=20, channels=2, tmp=tmp,
                                          redis_url=redis_url, model=slow, settle_s=args.slow_max_wait + 60,
                                          max_wait_s=args.slow_max_wait))  # fmt: skip
        finally:
            await fast.close()
            await slow.close()
            redis.stop()
    return results


def report(args: argparse.Namespace, results: list[Result], load_before: float) -> str:
    load, burst, slow = results
    lines = [
        machine_line(),
        f"Load average before the run: {load_before:.2f} (2 cores shared with other work: absolute times are noisy).",
        "",
        f"Command: `.venv/bin/python bench/discord_load.py --messages {args.messages} --users {args.users} "
        f"--channels {args.channels} --seconds {args.seconds:g} --burst {args.burst} --slow-messages "
        f"{args.slow_messages} --slow-reply-s {args.slow_reply_s:g} --slow-max-wait {args.slow_max_wait:g} --record`",
        "",
        "The bot runs as its own process (`python -m bot discord`, default settings: max_replies 8, "
        "max_replies_per_server 4, user_cooldown_s 2, wait_notice_s 20) against the fake Discord and a "
        "scripted OpenAI-compatible server. A message sent within 2 s of the same user's previous one waits for "
        "the cooldown (by design); the column before last takes that wait out. Fast model: "
        f"4 chunks over 80 ms; slow: {args.slow_reply_s:g} s a reply, "
        f"max_wait_s {args.slow_max_wait:g}.",
        "",
        HEADER,
        *(r.row() for r in results),
        "",
        f"Goal: {load.sent}/{load.sent} and {burst.sent}/{burst.sent} answered once with a fast model — "
        f"measured {load.once}/{load.sent} and {burst.once}/{burst.sent}; slow model: {slow.never} silently dropped.",
    ]
    return "\n".join(lines) + "\n"


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--slow-messages", type=int, default=60)
    parser.add_argument("--slow-reply-s", type=float, default=3.0)
    parser.add_argument("--slow-max-wait", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results = asyncio.run(main(args))
    text = report(args, results, load_before)
    print(text)
    if args.record:
        record_section("Discord under load and faults (issue #10)", text)


if __name__ == "__main__":
    cli()
