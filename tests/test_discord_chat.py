"""The Discord bot answering messages, end to end: a real discord.py client (the bot) against a
fake Discord on 127.0.0.1, the real engine and a real redis-server; only the model is scripted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.domain.splitting import find_fences
from bot.redis_conn import EmbeddedRedis
from bot.settings import Settings
from tests.conftest import free_port
from tests.discord_fake.harness import BUSY_MARKER, FAIL_MARKER, HOLD_MARKER, PAUSE_MARKER, DiscordHarness

NO_PINGS: dict[str, list[str]] = {"parse": []}
THUMBS = ["\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}"]


@pytest.fixture
async def h(settings: Settings) -> AsyncIterator[DiscordHarness]:
    async with DiscordHarness.running(settings) as harness:
        yield harness


# -- when the bot answers -----------------------------------------------------------------------


async def test_mention_gets_a_streamed_reply_in_the_personas_voice(h: DiscordHarness) -> None:
    message, outcome = await h.say(h.alice, h.general, "hello there", mention_bot=True)
    assert outcome.kind == "replied"
    [reply] = h.reply_of(outcome)
    assert h.fake.sent_in(h.general) == [reply], "one reply, and no answer to its own echoed message"
    assert reply.content == "[Ada] You said: hello there"  # the mention is not part of the prompt
    assert reply.reference_id == int(message["id"])
    # Streamed: posted with the first words, then edited to the whole text.
    assert len(reply.contents) >= 2
    assert reply.contents[0] != reply.content and reply.content.startswith(reply.contents[0])
    assert int(h.general["id"]) in h.fake.typing
    assert h.fake.bot_reactions_on(reply.id) == THUMBS
    record = await h.runtime.engine.feedback.get(outcome.reply_id or "")
    assert record is not None and record.persona_id == "assistant"
    assert record.conversation_id == f"discord:channel:{h.general['id']}"
    assert record.user_id == f"discord:{h.alice['id']}"
    assert record.context["discord_message_id"] == message["id"]
    assert record.context["discord_guild_id"] == str(h.guild.id)


async def test_no_mention_no_reply(h: DiscordHarness) -> None:
    _, outcome = await h.say(h.alice, h.general, "just chatting among humans")
    assert outcome.kind == "ignored"
    _, outcome = await h.say(h.alice, h.general, "hey @everyone look")
    assert outcome.kind == "ignored", "@everyone is not a mention of the bot"
    assert h.fake.sent_in(h.general) == []
    assert h.provider.bound == [], "the model was never called"


async def test_bots_and_system_messages_are_ignored(h: DiscordHarness) -> None:
    _, outcome = await h.say(h.other_bot, h.general, "hi", mention_bot=True)
    assert outcome.kind == "ignored"
    _, outcome = await h.say(h.alice, h.general, "joined", mention_bot=True, message_type=7)
    assert outcome.kind == "ignored"
    assert h.fake.sent == []


async def test_always_answer_channel_needs_no_mention(h: DiscordHarness) -> None:
    _, outcome = await h.say(h.alice, h.lounge, "anyone around?")
    assert outcome.kind == "replied"
    assert [m.content for m in h.reply_of(outcome)] == ["[Ada] You said: anyone around?"]


async def test_a_reply_to_the_bots_message_is_answered(h: DiscordHarness) -> None:
    _, first = await h.say(h.alice, h.general, "first", mention_bot=True)
    [reply] = h.reply_of(first)
    _, outcome = await h.say(h.bob, h.general, "and a follow-up", reply_to=reply.id)
    assert outcome.kind == "replied"
    # Bob joins Alice's conversation: his turn reaches the model named (who said what, issue #13).
    assert h.reply_of(outcome)[0].content == "[Ada] You said: bob: and a follow-up"
    # A reply to a human's message is not for the bot.
    human, _ = await h.say(h.alice, h.general, "a human message")
    _, outcome = await h.say(h.bob, h.general, "replying to alice", reply_to=int(human["id"]))
    assert outcome.kind == "ignored"


async def test_direct_messages_are_answered_one_conversation_per_user(h: DiscordHarness) -> None:
    _, outcome = await h.say(h.alice, h.fake.dm_channel(h.alice), "hello in private")
    assert outcome.kind == "replied"
    [reply] = h.reply_of(outcome)
    assert reply.content == "[Ada] You said: hello in private"
    record = await h.runtime.engine.feedback.get(outcome.reply_id or "")
    assert record is not None and record.conversation_id == f"discord:dm:{h.alice['id']}"


async def test_direct_messages_can_be_switched_off(settings: Settings) -> None:
    async with DiscordHarness.running(settings, answer_in_dms=False) as h:
        _, outcome = await h.say(h.alice, h.fake.dm_channel(h.alice), "hello in private")
        assert outcome.kind == "ignored"
        _, outcome = await h.say(h.alice, h.fake.dm_channel(h.alice), "even so?", mention_bot=True)
        assert outcome.kind == "ignored"
        assert h.fake.sent == []


# -- replies ------------------------------------------------------------------------------------


def squash(text: str) -> str:
    """Text without fence markers and whitespace (what splitting must preserve)."""
    return "".join(text.replace("```python", "").replace("```", "").split())


def long_reply_with_code() -> str:
    prose = "\n\n".join(f"Paragraph {i}. " + "This sentence explains a detail of the answer. " * 12 for i in range(4))
    code = "\n".join(f"    total += compute({i})  # step {i}" for i in range(80))
    return f"{prose}\n\nHere is the code:\n\n```python\ndef main():\n{code}\n```\n\nThat's all."


async def test_a_long_reply_is_split_without_breaking_the_code_block(h: DiscordHarness) -> None:
    text = long_reply_with_code()
    assert len(text) > 5000
    h.provider.queue.append(text)
    message, outcome = await h.say(h.alice, h.general, "explain everything", mention_bot=True)
    messages = h.reply_of(outcome)
    assert len(messages) >= 3
    assert h.fake.sent_in(h.general) == messages
    assert messages[0].reference_id == int(message["id"])
    assert all(m.reference_id is None for m in messages[1:]), "only the first message replies"
    for m in messages:
        assert 0 < len(m.content) <= 2000
        assert all(a == NO_PINGS for a in m.allowed_mentions)
    for m in messages[:-1]:
        assert all(f.close < len(m.content) for f in find_fences(m.content)), "each message closes its fences"
    code_parts = [m.content for m in messages if "total += compute" in m.content]
    assert len(code_parts) >= 2, "the code block spans messages"
    assert all(part.count("```") % 2 == 0 for part in code_parts)
    assert all(
        part.split("total += compute")[0].rstrip().endswith(("```python\ndef main():", "```python"))
        for part in code_parts
    )
    assert messages[-1].content.endswith("That's all.")
    assert squash("".join(m.content for m in messages)) == squash(text), "nothing lost or repeated"
    assert h.fake.bot_reactions_on(messages[-1].id) == THUMBS, "the rating hint goes on the last message"
    for m in messages:  # every message of the reply can be rated
        assert await h.runtime.engine.feedback.resolve(f"discord:msg:{m.id}") == outcome.reply_id


async def test_model_output_never_pings(h: DiscordHarness) -> None:
    role_id = h.fake.add_role(h.guild, "mods")
    h.provider.queue.append(f"@everyone and @here, listen! <@{h.bob['id']}> <@&{role_id}> wake up.")
    _, outcome = await h.say(h.alice, h.general, "say something loud", mention_bot=True)
    [reply] = h.reply_of(outcome)
    assert h.bot.allowed_mentions is not None and h.bot.allowed_mentions.to_dict() == NO_PINGS, "the default too"
    assert reply.content.startswith("@everyone and @here")
    assert reply.allowed_mentions and all(a == NO_PINGS for a in reply.allowed_mentions)
    sends_and_edits = [r for r in h.fake.requests if r.method in ("POST", "PATCH") and "/messages" in r.path]
    assert sends_and_edits and all(r.body["allowed_mentions"] == NO_PINGS for r in sends_and_edits)


async def test_a_long_message_is_truncated_with_a_note(settings: Settings) -> None:
    async with DiscordHarness.running(settings, max_input_chars=100) as h:
        _, outcome = await h.say(h.alice, h.general, "x" * 300, mention_bot=True)
        [reply] = h.reply_of(outcome)
        assert "read only its first 100 characters" in reply.content
        assert reply.content.endswith("You said: " + "x" * 100)


async def test_a_bare_mention_gets_the_greeting(h: DiscordHarness) -> None:
    _, outcome = await h.say(h.alice, h.general, "", mention_bot=True)
    assert outcome.kind == "greeted"
    assert h.reply_of(outcome)[0].content == "Hi alice! I'm Ada. What can I help you with?"
    assert h.provider.bound == []


async def test_the_token_never_reaches_the_logs(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with DiscordHarness.running(settings) as h:
        await h.say(h.alice, h.general, "hello", mention_bot=True)
        await h.fake.command(h.alice, h.general, "persona list")
    assert len(caplog.records) > 50, "discord.py's debug logging was captured"
    assert not [r for r in caplog.records if h.fake.token in r.getMessage()]


# -- conversations ------------------------------------------------------------------------------


async def test_each_thread_is_its_own_conversation(h: DiscordHarness) -> None:
    thread_a = h.fake.add_thread(h.general, "thread a")
    thread_b = h.fake.add_thread(h.general, "thread b")
    await h.fake.dispatch("THREAD_CREATE", thread_a)
    await h.fake.dispatch("THREAD_CREATE", thread_b)
    _, a1 = await h.say(h.alice, thread_a, "the secret word is pineapple", mention_bot=True)
    _, b1 = await h.say(h.alice, thread_b, "what is the secret word?", mention_bot=True)
    _, a2 = await h.say(h.alice, thread_a, "what is the secret word?", mention_bot=True)
    assert h.reply_of(a1)[0].channel_id == int(thread_a["id"])
    assert h.reply_of(b1)[0].channel_id == int(thread_b["id"])
    feedback = h.runtime.engine.feedback
    b1_prompt = str((await feedback.get(b1.reply_id or "")).prompt_messages)  # type: ignore[union-attr]
    a2_prompt = str((await feedback.get(a2.reply_id or "")).prompt_messages)  # type: ignore[union-attr]
    assert "pineapple" not in b1_prompt, "thread B does not see thread A"
    assert "pineapple" in a2_prompt, "thread A remembers itself"
    assert (await feedback.get(a2.reply_id or "")).conversation_id == f"discord:thread:{thread_a['id']}"  # type: ignore[union-attr]


async def test_auto_thread_answers_a_mention_in_a_new_thread(settings: Settings) -> None:
    async with DiscordHarness.running(settings, auto_thread=True) as h:
        _, outcome = await h.say(h.alice, h.general, "Plan my trip to Rome\nwith details", mention_bot=True)
        [reply] = h.reply_of(outcome)
        [thread] = [c for c in h.fake.channels.values() if c.get("parent_id") == h.general["id"]]
        assert thread["name"] == "Plan my trip to Rome"
        assert reply.channel_id == int(thread["id"])
        assert h.fake.sent_in(h.general) == []
        # A reply in the thread continues the thread's conversation.
        _, follow = await h.say(h.alice, thread, "and the hotels?", reply_to=reply.id)
        assert h.reply_of(follow)[0].channel_id == int(thread["id"])
        record = await h.runtime.engine.feedback.get(follow.reply_id or "")
        assert record is not None and record.conversation_id == f"discord:thread:{thread['id']}"


# -- abuse and failure --------------------------------------------------------------------------


async def test_a_model_failure_apologizes_and_the_bot_keeps_answering(
    h: DiscordHarness, caplog: pytest.LogCaptureFixture
) -> None:
    message, outcome = await h.say(h.alice, h.general, f"{FAIL_MARKER} now", mention_bot=True)
    assert outcome.kind == "failed"
    [apology] = h.fake.sent_in(h.general)
    assert "Sorry" in apology.content and "couldn't come up with a reply" in apology.content
    assert "scripted failure" not in apology.content, "no internals in user-facing text"
    [logged] = [r for r in caplog.records if r.getMessage().startswith("error handling on_message")]
    assert f"id={message['id']}" in logged.getMessage() and f"guild={h.guild.id}" in logged.getMessage()
    assert logged.exc_info is not None, "logged with the traceback"
    _, outcome = await h.say(h.alice, h.general, "are you back?", mention_bot=True)
    assert outcome.kind == "replied"
    assert h.reply_of(outcome)[0].content == "[Ada] You said: are you back?"


async def test_a_redis_outage_is_answered_without_memory_and_the_bot_recovers(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down: a message is still answered (without remembered turns, and the user is told so),
    its reply is journaled and reaches the feedback log once Redis is back; commands that need Redis
    say so."""
    server = EmbeddedRedis(tmp_path / "own-redis", port=free_port())
    url = server.start()
    settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": SecretStr(url)})})
    try:
        async with DiscordHarness.running(settings) as h:
            server.stop()
            _, outcome = await h.say(h.alice, h.general, "hello?", mention_bot=True)
            assert outcome.kind == "replied"
            [reply] = h.reply_of(outcome)
            assert reply.content.startswith("[Ada] You said: hello?")
            assert "My memory is unavailable right now" in reply.content
            answer = await h.fake.command(h.admin, h.general, "persona set", persona="captain")
            assert answer["flags"] == 64
            assert answer["content"] == "My storage is unavailable right now. Please try again in a moment."
            refused = f"command failed: /persona set by user={h.admin['id']}"
            assert any(r.getMessage().startswith(refused) for r in caplog.records)
            server.start()
            assert h.runtime.replayer is not None
            async with asyncio.timeout(15):
                await h.runtime.replayer.settled()
            assert outcome.reply_id is not None
            record = await h.runtime.feedback.get(outcome.reply_id)
            assert record is not None and record.reply == "[Ada] You said: hello?"
            _, outcome = await h.say(h.alice, h.general, "hello again", mention_bot=True)
            assert outcome.kind == "replied"
            assert "memory is unavailable" not in h.reply_of(outcome)[0].content
    finally:
        server.stop()


async def test_a_message_sent_while_redis_stalls_is_answered_exactly_once(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis SIGSTOPped during the claim: the bot claims the message itself, waits for its memory,
    answers once when Redis resumes, and still knows the message when the gateway redelivers it."""
    caplog.set_level(logging.INFO, logger="bot.coordination")
    server = EmbeddedRedis(tmp_path / "own-redis", port=free_port())
    url = server.start()
    assert server.process is not None
    settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": SecretStr(url)})})
    try:
        async with DiscordHarness.running(settings, state_timeout_s=0.5) as h:
            await h.say(h.bob, h.general, "before", mention_bot=True)
            os.kill(server.process.pid, signal.SIGSTOP)
            message = h.fake.user_message(h.alice, h.general, "during the stall", mention_bot=True)
            answered = asyncio.create_task(h.deliver(message))
            claimed_here = f"message {message['id']} claimed by this process only"
            async with asyncio.timeout(15):
                while not any(r.getMessage().startswith(claimed_here) for r in caplog.records):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            os.kill(server.process.pid, signal.SIGCONT)
            outcome = await answered
            assert outcome.kind == "replied"
            [reply] = [m for m in h.fake.sent_in(h.general) if m.reference_id == int(message["id"])]
            assert reply.content == "[Ada] You said: alice: during the stall"  # bob spoke first: turns are named
            waiter = h.bot.wait_for("persona_handled", check=lambda m, _: m.id == int(message["id"]), timeout=15)
            await h.fake.reconnect(replay=[("MESSAGE_CREATE", message)])
            assert (await waiter)[1].kind == "duplicate"
            assert [m.reference_id for m in h.fake.sent_in(h.general)].count(int(message["id"])) == 1
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


async def test_gateway_redelivery_after_a_reconnect_does_not_duplicate_replies(h: DiscordHarness) -> None:
    message, outcome = await h.say(h.alice, h.general, "only once please", mention_bot=True)
    assert outcome.kind == "replied"
    waiter = h.bot.wait_for("persona_handled", check=lambda m, _: m.id == int(message["id"]), timeout=15)
    await h.fake.reconnect(replay=[("MESSAGE_CREATE", message)])
    _, again = await waiter
    assert again.kind == "duplicate"
    assert len(h.fake.resumes) == 1, "the client resumed its session"
    _, after = await h.say(h.alice, h.general, "a new message", mention_bot=True)
    assert after.kind == "replied"
    replies = [m for m in h.fake.sent_in(h.general) if m.reference_id == int(message["id"])]
    assert len(replies) == 1


# -- cooldowns and the queue ----------------------------------------------------------------------


async def test_a_cooldown_is_judged_by_when_messages_were_sent(settings: Settings) -> None:
    """Messages sent an hour apart but delivered together (a stall) are all answered; one sent
    within the cooldown is not silently dropped: it waits, and here (an hour) is told why at once."""
    now = time.time()
    async with DiscordHarness.running(settings, user_cooldown_s=3600) as h:
        kinds = []
        for age in (7300, 3650, 0):
            message = h.fake.user_message(h.alice, h.general, f"sent {age}s ago", mention_bot=True, sent_at=now - age)
            kinds.append((await h.deliver(message)).kind)
        assert kinds == ["replied", "replied", "replied"]
        too_soon, outcome = await h.say(h.alice, h.general, "and again", mention_bot=True)
        assert outcome.kind == "given_up"
        [notice] = h.reply_of(outcome)
        assert notice.reference_id == int(too_soon["id"])
        assert "faster than I answer them (one every 60 minutes)" in notice.content
        _, other_user = await h.say(h.bob, h.general, "three", mention_bot=True)
        assert other_user.kind == "replied", "the cooldown is per user"


async def test_ten_at_once_in_one_channel_are_each_answered_once(h: DiscordHarness) -> None:
    users = [h.fake.add_user(f"user{i}") for i in range(10)]
    for user in users:
        h.fake.join(h.guild, user)
    messages = [h.fake.user_message(u, h.general, f"question {i}", mention_bot=True) for i, u in enumerate(users)]
    outcomes = await asyncio.gather(*(h.deliver(m) for m in messages))
    assert [o.kind for o in outcomes] == ["replied"] * 10
    for i, (message, outcome) in enumerate(zip(messages, outcomes, strict=True)):
        answers = [m for m in h.fake.sent_in(h.general) if m.reference_id == int(message["id"])]
        assert answers == h.reply_of(outcome), "one reply each"
        # Once several people have spoken, turns carry their speaker's name (who said what).
        assert answers[0].content in (f"[Ada] You said: question {i}", f"[Ada] You said: user{i}: question {i}")


async def test_users_take_turns_in_a_busy_channel(h: DiscordHarness) -> None:
    """What a user sends while their reply is pending waits behind the other users' messages."""
    carol = h.fake.add_user("carol")
    h.fake.join(h.guild, carol)
    held = asyncio.create_task(h.deliver(h.fake.user_message(h.alice, h.general, HOLD_MARKER, mention_bot=True)))
    await h.fake.wait_until(lambda: int(h.general["id"]) in h.fake.typing)  # alice's reply is being generated
    queued = [(h.alice, "a1"), (h.alice, "a2"), (h.bob, "b1"), (h.alice, "a3"), (carol, "c1")]
    messages = [h.fake.user_message(user, h.general, text, mention_bot=True) for user, text in queued]
    waiting = [asyncio.create_task(h.deliver(m)) for m in messages]
    await h.until(lambda: h.bot.services.queue.waiting == len(queued))
    h.provider.hold.set()
    assert {o.kind for o in await asyncio.gather(held, *waiting)} == {"replied"}
    turns = await h.runtime.engine.memory.load(f"discord:channel:{h.general['id']}", 10)
    assert [t.content for t in turns if t.role == "user"] == [HOLD_MARKER, "b1", "c1", "a1", "a2", "a3"]


async def test_a_long_wait_shows_a_notice_that_the_reply_then_replaces(settings: Settings) -> None:
    async with DiscordHarness.running(settings, max_replies=1, wait_notice_s=0) as h:
        held = asyncio.create_task(h.deliver(h.fake.user_message(h.alice, h.general, HOLD_MARKER, mention_bot=True)))
        await h.fake.wait_until(lambda: int(h.general["id"]) in h.fake.typing)
        asked = h.fake.user_message(h.bob, h.lounge, "my turn?")  # another channel: only the slot is shared
        waiting = asyncio.create_task(h.deliver(asked))
        [notice] = await h.fake.wait_until(lambda: h.fake.sent_in(h.lounge))
        assert notice.reference_id == int(asked["id"])
        assert notice.content.startswith("-# Lots of messages right now: yours is in line, and I'll answer here in")
        h.provider.hold.set()
        assert (await held).kind == "replied"
        outcome = await waiting
        assert outcome.kind == "replied"
        assert h.reply_of(outcome) == [notice], "the notice became the reply: one answer to the message"
        assert notice.content == "[Ada] You said: my turn?"
        assert h.fake.sent_in(h.lounge) == [notice]


async def test_a_notice_deleted_by_a_moderator_does_not_lose_the_reply(settings: Settings) -> None:
    async with DiscordHarness.running(settings, max_replies=1, wait_notice_s=0) as h:
        held = asyncio.create_task(h.deliver(h.fake.user_message(h.alice, h.general, HOLD_MARKER, mention_bot=True)))
        await h.until(lambda: h.bot.services.queue.running == 1)
        asked = h.fake.user_message(h.bob, h.lounge, "answer me anyway")
        waiting = asyncio.create_task(h.deliver(asked))
        [notice] = await h.fake.wait_until(lambda: h.fake.sent_in(h.lounge))
        notice.deleted = True  # removed in Discord: edits now answer 404 Unknown Message
        h.provider.hold.set()
        await held
        outcome = await waiting
        assert outcome.kind == "replied"
        [reply] = h.fake.sent_in(h.lounge)
        assert reply.id != notice.id and reply.reference_id == int(asked["id"])
        assert reply.content == "[Ada] You said: answer me anyway"


async def test_a_message_that_cannot_be_answered_in_time_is_given_up_with_a_reason(settings: Settings) -> None:
    async with DiscordHarness.running(settings, max_replies=1, wait_notice_s=0, max_wait_s=1) as h:
        for i in range(3):  # a few quick replies: the queue learns that replies take well under a second
            await h.say(h.bob, h.lounge, f"warm-up {i}")
        held = asyncio.create_task(h.deliver(h.fake.user_message(h.alice, h.general, HOLD_MARKER, mention_bot=True)))
        await h.fake.wait_until(lambda: int(h.general["id"]) in h.fake.typing)
        asked, outcome = await h.say(h.bob, h.lounge, "still there?")  # expected soon, but the slot stays taken
        assert outcome.kind == "given_up"
        [notice] = h.reply_of(outcome)
        assert notice.reference_id == int(asked["id"])
        assert notice.content.startswith("-# Sorry, I couldn't get to this message: it waited more than 1 second")
        assert "in line" in notice.contents[0], "it was told it waits, then why it was given up"
        h.provider.hold.set()
        assert (await held).kind == "replied"


async def test_a_message_expected_to_wait_too_long_is_given_up_at_once(settings: Settings) -> None:
    async with DiscordHarness.running(settings, max_replies=1, max_wait_s=1) as h:
        held = asyncio.create_task(h.deliver(h.fake.user_message(h.alice, h.general, HOLD_MARKER, mention_bot=True)))
        await h.until(lambda: h.bot.services.queue.running == 1)
        asked, outcome = await h.say(h.bob, h.lounge, "me too")  # no reply measured yet: a few seconds expected
        assert outcome.kind == "given_up"
        [notice] = h.reply_of(outcome)
        assert notice.reference_id == int(asked["id"]) and len(notice.contents) == 1
        assert notice.content.startswith("-# Sorry, I'm too busy to answer this: it would wait")
        assert "longer than the 1 second I allow" in notice.content
        h.provider.hold.set()
        assert (await held).kind == "replied"


async def test_shutting_down_lets_replies_finish_and_tells_those_still_waiting(settings: Settings) -> None:
    async with DiscordHarness.running(settings, max_replies=1) as h:
        writing = h.fake.user_message(h.alice, h.general, HOLD_MARKER, mention_bot=True)
        held = asyncio.create_task(h.deliver(writing))
        await h.until(lambda: h.bot.services.queue.running == 1)
        waiting = h.fake.user_message(h.bob, h.lounge, "will I get an answer?")
        queued = asyncio.create_task(h.deliver(waiting))
        await h.until(lambda: h.bot.services.queue.waiting == 1)
        stopping = asyncio.create_task(h.stop_bot())
        [notice] = await h.fake.wait_until(lambda: h.fake.sent_in(h.lounge))
        assert notice.reference_id == int(waiting["id"]) and "I'm restarting" in notice.content
        assert (await queued).kind == "given_up"
        h.provider.hold.set()  # the reply being written finishes during the grace period
        assert (await held).kind == "replied"
        await stopping
        [reply] = [m for m in h.fake.sent_in(h.general) if m.reference_id == int(writing["id"])]
        assert reply.content == f"[Ada] You said: {HOLD_MARKER}"


async def test_deleting_the_message_stops_its_reply(h: DiscordHarness) -> None:
    conversation = f"discord:channel:{h.general['id']}"
    asked = h.fake.user_message(h.alice, h.general, f"{PAUSE_MARKER}, then tell me everything", mention_bot=True)
    running = asyncio.create_task(h.deliver(asked))
    await h.fake.wait_until(lambda: h.fake.sent_in(h.general))  # the first words are shown
    await h.fake.delete_user_message(asked)
    stopped = await running  # `hold` is never set: only stopping the generation ends this reply
    assert stopped.kind == "stopped"
    assert h.fake.sent_in(h.general) == [], "the partial reply is taken back"
    assert await h.runtime.engine.memory.load(conversation, 10) == [], "nothing of it is remembered"
    assert len(h.bot.services.in_flight) == 0
    _, later = await h.say(h.alice, h.general, "hello again", mention_bot=True)
    assert later.kind == "replied"
    assert [t.content for t in await h.runtime.engine.memory.load(conversation, 10)] == [
        "hello again",
        "[Ada] You said: hello again",
    ]


async def test_deleting_another_message_does_not_stop_a_reply(h: DiscordHarness) -> None:
    unrelated, _ = await h.say(h.bob, h.general, "just chatting")
    asked = h.fake.user_message(h.alice, h.general, f"{PAUSE_MARKER} please", mention_bot=True)
    running = asyncio.create_task(h.deliver(asked))
    await h.fake.wait_until(lambda: h.fake.sent_in(h.general))
    await h.fake.delete_user_message(unrelated)
    h.provider.hold.set()
    assert (await running).kind == "replied"


async def test_a_full_model_queue_gets_a_short_busy_reply(h: DiscordHarness) -> None:
    conversation = f"discord:channel:{h.general['id']}"
    _, outcome = await h.say(h.alice, h.general, f"{BUSY_MARKER}!", mention_bot=True)
    assert outcome.kind == "busy"
    [notice] = h.reply_of(outcome)
    assert "too many messages" in notice.content and notice.allowed_mentions[-1] == NO_PINGS
    assert await h.runtime.engine.memory.load(conversation, 10) == []
    _, later = await h.say(h.alice, h.general, "and now?", mention_bot=True)
    assert later.kind == "replied"

