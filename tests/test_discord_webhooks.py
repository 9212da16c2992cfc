"""Personas posting through webhooks, under faults: a webhook deleted between or during replies,
transient errors from Discord, lookups in one channel not holding up another, uploaded avatars."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.settings import Settings
from tests.discord_fake.harness import PAUSE_MARKER, DiscordHarness


@pytest.fixture
async def h(settings: Settings) -> AsyncIterator[DiscordHarness]:
    async with DiscordHarness.running(settings) as harness:
        await harness.fake.command(harness.admin, harness.general, "persona set", persona="captain")
        yield harness


def png(red: int) -> bytes:
    """A 1x1 PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = zlib.compress(bytes([0, red, 0, 0]))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


async def test_a_deleted_webhook_is_recreated_and_the_reply_still_posts(h: DiscordHarness) -> None:
    await h.say(h.alice, h.general, "ahoy", mention_bot=True)
    [old] = h.fake.webhooks
    h.fake.delete_webhook(old)  # a moderator deletes it between replies
    _, second = await h.say(h.alice, h.general, "still there?", mention_bot=True)
    assert second.kind == "replied"
    [reply] = h.reply_of(second)
    [new] = h.fake.webhooks
    assert new != old and reply.via == "webhook" and reply.webhook_id == new
    assert reply.content == "[Captain Redbeard] You said: still there?"
    assert [r.status for r in h.fake.requests if r.path.startswith(f"/webhooks/{old}/")][-1] == 404


async def test_a_webhook_deleted_while_a_reply_streams_gets_the_reply_on_a_new_one(h: DiscordHarness) -> None:
    asked = h.fake.user_message(h.alice, h.general, f"{PAUSE_MARKER} and then more", mention_bot=True)
    running = asyncio.create_task(h.deliver(asked))
    [partial] = await h.fake.wait_until(lambda: h.fake.sent_in(h.general))
    [old] = h.fake.webhooks
    h.fake.delete_webhook(old)
    h.provider.hold.set()
    outcome = await running
    assert outcome.kind == "replied"
    [reply] = h.reply_of(outcome)
    assert reply.via == "webhook" and reply.webhook_id != old
    assert reply.content == f"[Captain Redbeard] You said: {PAUSE_MARKER} and then more"
    assert partial.deleted, "the half-written message of the old webhook is taken away"
    assert h.fake.sent_in(h.general) == [reply]
    assert await h.react(h.bob, reply.id, "\N{THUMBS UP SIGN}") == "rated"


async def test_transient_discord_errors_are_retried_and_never_cached(h: DiscordHarness) -> None:
    await h.say(h.alice, h.general, "one", mention_bot=True)
    [webhook] = h.fake.webhooks
    h.fake.fail("POST", rf"/webhooks/{webhook}/[^/]+", 500)  # one server error on the send
    _, second = await h.say(h.alice, h.general, "two", mention_bot=True)
    assert [m.via for m in h.reply_of(second)] == ["webhook"], "sent again after the error"
    # A server error while finding the webhook of another channel: that reply posts as the bot ...
    await h.fake.command(h.admin, h.lounge, "persona set", persona="captain")
    h.fake.fail("GET", rf"/channels/{h.lounge['id']}/webhooks", 503)
    _, third = await h.say(h.alice, h.lounge, "three")
    assert [m.via for m in h.reply_of(third)] == ["channel"]
    assert h.reply_of(third)[0].content == "[Captain Redbeard] You said: three"
    # ... and the next one finds (creates) it: the failure was not remembered.
    _, fourth = await h.say(h.alice, h.lounge, "four")
    assert [m.via for m in h.reply_of(fourth)] == ["webhook"]


async def test_a_webhook_post_discord_refuses_is_posted_as_the_bot(h: DiscordHarness) -> None:
    """Discord refuses some webhook names (e.g. containing "discord") with a 400: the reply still goes out."""
    await h.say(h.alice, h.general, "one", mention_bot=True)
    [webhook] = h.fake.webhooks
    h.fake.fail("POST", rf"/webhooks/{webhook}/[^/]+", 400, code=50035)
    _, refused = await h.say(h.alice, h.general, "two", mention_bot=True)
    assert refused.kind == "replied"
    assert [m.via for m in h.reply_of(refused)] == ["channel"]
    assert h.reply_of(refused)[0].content == "[Captain Redbeard] You said: two"


async def test_a_slow_webhook_lookup_in_one_channel_does_not_hold_up_another(h: DiscordHarness) -> None:
    await h.fake.command(h.admin, h.lounge, "persona set", persona="captain")
    gate = h.fake.hold("GET", rf"/channels/{h.general['id']}/webhooks")
    stuck = asyncio.create_task(h.deliver(h.fake.user_message(h.alice, h.general, "slow one", mention_bot=True)))
    await h.fake.wait_until(lambda: gate.waiting)
    _, other = await h.say(h.bob, h.lounge, "meanwhile")  # needs a webhook lookup of its own
    assert other.kind == "replied" and h.reply_of(other)[0].via == "webhook"
    assert not stuck.done()
    gate.open.set()
    assert (await stuck).kind == "replied"


async def test_a_persona_with_an_avatar_file_gets_its_own_webhook_with_the_image(
    settings: Settings, personas_dir: Path, tmp_path: Path
) -> None:
    avatar = tmp_path / "parrot.png"
    avatar.write_bytes(png(200))
    captain = (personas_dir / "captain.yaml").read_text()
    (personas_dir / "parrot.yaml").write_text(
        captain.replace("id: captain", "id: parrot").replace("name: Captain Redbeard", "name: Polly")
        + f"  avatar_path: {avatar}\n"
    )
    async with DiscordHarness.running(settings) as h:
        await h.fake.command(h.admin, h.general, "persona set", persona="parrot")
        _, outcome = await h.say(h.alice, h.general, "squawk", mention_bot=True)
        [reply] = h.reply_of(outcome)
        assert reply.via == "webhook" and reply.payload["author"]["username"] == "Polly"
        hook = h.fake.webhooks[reply.webhook_id or 0]
        assert hook["name"].startswith("persona-bot:parrot:")
        assert h.fake.webhook_avatars[reply.webhook_id or 0] == "data:image/png;base64," + base64.b64encode(
            png(200)
        ).decode()
        await h.fake.command(h.admin, h.general, "persona set", persona="captain")
        _, shared = await h.say(h.alice, h.general, "and you?", mention_bot=True)
        assert h.reply_of(shared)[0].webhook_id != reply.webhook_id, "other personas share the channel's own"
        assert len(h.fake.webhooks) == 2
        # A new image: the same webhook, edited.
        avatar.write_bytes(png(10))
        await h.fake.command(h.admin, h.general, "persona set", persona="parrot")
        _, again = await h.say(h.alice, h.general, "new look", mention_bot=True)
        assert h.reply_of(again)[0].webhook_id == reply.webhook_id and len(h.fake.webhooks) == 2
        assert h.fake.webhook_avatars[reply.webhook_id or 0].endswith(base64.b64encode(png(10)).decode())
