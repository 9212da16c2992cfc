"""Slash commands and reaction ratings, end to end against the fake Discord (see test_discord_chat)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.settings import Settings
from tests.discord_fake import payloads as p
from tests.discord_fake.harness import PAUSE_MARKER, DiscordHarness

UP, DOWN = "\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}"
EPHEMERAL = 64


@pytest.fixture
async def h(settings: Settings) -> AsyncIterator[DiscordHarness]:
    async with DiscordHarness.running(settings) as harness:
        yield harness


def is_ephemeral(answer: dict[str, Any]) -> bool:
    return bool(int(answer.get("flags") or 0) & EPHEMERAL)


# -- /persona -----------------------------------------------------------------------------------


async def test_commands_are_registered_with_discord(h: DiscordHarness) -> None:
    names = {c["name"]: c for c in h.fake.commands}
    assert set(names) == {"persona", "forget", "forget-me", "feedback"}
    assert {o["name"] for o in names["persona"]["options"]} == {"list", "show", "set", "reset", "reload"}


async def test_persona_set_by_an_admin_changes_the_voice_and_survives_a_restart(h: DiscordHarness) -> None:
    answer = await h.fake.command(h.admin, h.general, "persona set", persona="captain")
    assert "Captain Redbeard" in answer["content"] and "in this channel" in answer["content"]
    _, outcome = await h.say(h.alice, h.general, "ahoy", mention_bot=True)
    assert h.reply_of(outcome)[0].content == "[Captain Redbeard] You said: ahoy"
    record = await h.runtime.engine.feedback.get(outcome.reply_id or "")
    assert record is not None and record.persona_id == "captain"
    assert "Captain Redbeard" in record.prompt_messages[0]["content"], "the persona's own system prompt"
    # Other channels keep the default persona.
    _, elsewhere = await h.say(h.alice, h.lounge, "hello")
    assert h.reply_of(elsewhere)[0].content == "[Ada] You said: hello"
    await h.restart_bot()
    _, after = await h.say(h.alice, h.general, "still there?", mention_bot=True)
    assert h.reply_of(after)[0].content == "[Captain Redbeard] You said: still there?"


async def test_persona_set_by_a_non_admin_is_refused(h: DiscordHarness) -> None:
    answer = await h.fake.command(h.alice, h.general, "persona set", persona="captain")
    assert is_ephemeral(answer)
    assert "Manage Channels" in answer["content"]
    _, outcome = await h.say(h.alice, h.general, "who are you?", mention_bot=True)
    assert h.reply_of(outcome)[0].content.startswith("[Ada]")


async def test_manage_channels_permission_is_enough(h: DiscordHarness) -> None:
    permissions = p.MEMBER | p.MANAGE_CHANNELS
    answer = await h.fake.command(h.bob, h.general, "persona set", persona="terse", permissions=permissions)
    assert not is_ephemeral(answer) and "Unit 7" in answer["content"]


async def test_persona_scopes_thread_over_channel_over_server(h: DiscordHarness) -> None:
    thread = h.fake.add_thread(h.general, "a thread")
    await h.fake.dispatch("THREAD_CREATE", thread)
    await h.fake.command(h.admin, h.lounge, "persona set", persona="terse", scope="server")
    await h.fake.command(h.admin, h.general, "persona set", persona="captain", scope="channel")
    await h.fake.command(h.admin, thread, "persona set", persona="assistant")  # "here" in a thread
    replies = {}
    for name, channel in (("lounge", h.lounge), ("general", h.general), ("thread", thread)):
        _, outcome = await h.say(h.alice, channel, "hi", mention_bot=True)
        replies[name] = h.reply_of(outcome)[0].content
    assert replies == {
        "lounge": "[Unit 7] You said: hi",
        "general": "[Captain Redbeard] You said: hi",
        "thread": "[Ada] You said: hi",
    }
    answer = await h.fake.command(h.admin, h.general, "persona reset", scope="channel")
    assert "Unit 7" in answer["content"], "back to the server's choice"
    _, outcome = await h.say(h.alice, h.general, "hi", mention_bot=True)
    assert h.reply_of(outcome)[0].content == "[Unit 7] You said: hi"


async def test_persona_set_unknown_id_is_an_ephemeral_error(h: DiscordHarness) -> None:
    answer = await h.fake.command(h.admin, h.general, "persona set", persona="ghost")
    assert is_ephemeral(answer) and "no persona `ghost`" in answer["content"]


async def test_persona_list_show_and_autocomplete(h: DiscordHarness) -> None:
    listing = await h.fake.command(h.alice, h.general, "persona list")
    assert is_ephemeral(listing)
    assert (
        "▶ **Ada** (`assistant`)" in listing["content"] and "• **Captain Redbeard** (`captain`)" in listing["content"]
    )
    shown = await h.fake.command(h.alice, h.general, "persona show")
    assert "**Ada** (`assistant`" in shown["content"] and "the default persona" in shown["content"]
    shown = await h.fake.command(h.alice, h.general, "persona show", persona="captain")
    assert "Captain Redbeard" in shown["content"] and "Not speaking here" in shown["content"]
    choices = await h.fake.autocomplete(h.admin, h.general, "persona set", focused="persona", persona="cap")
    assert {"name": "Captain Redbeard (captain)", "value": "captain"} in choices
    assert all("cap" in c["value"] or "cap" in c["name"].lower() for c in choices)
    assert not any(c["value"] == "assistant" for c in choices)


async def test_persona_in_a_dm_is_the_users_own_choice(h: DiscordHarness) -> None:
    dm = h.fake.dm_channel(h.alice)
    answer = await h.fake.command(h.alice, dm, "persona set", persona="terse")
    assert "in our DMs" in answer["content"]
    _, outcome = await h.say(h.alice, dm, "hi")
    assert h.reply_of(outcome)[0].content == "[Unit 7] You said: hi"


# -- /forget, /forget-me, /feedback ---------------------------------------------------------------


async def test_forget_clears_this_conversation_only(h: DiscordHarness) -> None:
    await h.say(h.alice, h.general, "remember: the code is 1234", mention_bot=True)
    await h.say(h.alice, h.lounge, "remember: the lounge code is 9876")
    refused = await h.fake.command(h.alice, h.general, "forget")
    assert is_ephemeral(refused) and "Manage Channels" in refused["content"]
    answer = await h.fake.command(h.admin, h.general, "forget")
    assert "forgotten" in answer["content"]
    memory = h.runtime.engine.memory
    assert await memory.load(f"discord:channel:{h.general['id']}", 10) == []
    assert len(await memory.load(f"discord:channel:{h.lounge['id']}", 10)) == 2
    _, outcome = await h.say(h.alice, h.general, "what is the code?", mention_bot=True)
    record = await h.runtime.engine.feedback.get(outcome.reply_id or "")
    assert record is not None and "1234" not in str(record.prompt_messages)


async def test_forget_stops_a_reply_in_progress(h: DiscordHarness) -> None:
    """Otherwise the reply, when it finishes, writes the forgotten conversation back."""
    await h.say(h.alice, h.general, "remember: the code is 1234", mention_bot=True)
    asked = h.fake.user_message(h.bob, h.general, f"{PAUSE_MARKER}: what is the code?", mention_bot=True)
    running = asyncio.create_task(h.deliver(asked))
    await h.fake.wait_until(lambda: len(h.fake.sent_in(h.general)) == 2)  # the second reply has begun
    answer = await h.fake.command(h.admin, h.general, "forget")
    assert "forgotten" in answer["content"]
    assert (await running).kind == "stopped"  # `hold` is never set
    assert await h.runtime.engine.memory.load(f"discord:channel:{h.general['id']}", 10) == []


async def test_forget_me_stops_the_callers_replies_only(h: DiscordHarness) -> None:
    mine = h.fake.user_message(h.alice, h.general, f"{PAUSE_MARKER}: mine", mention_bot=True)
    bobs = h.fake.user_message(h.bob, h.lounge, f"{PAUSE_MARKER}: bob's")
    running = [asyncio.create_task(h.deliver(m)) for m in (mine, bobs)]
    await h.fake.wait_until(lambda: h.fake.sent_in(h.general) and h.fake.sent_in(h.lounge))
    await h.fake.command(h.alice, h.general, "forget-me")
    assert (await running[0]).kind == "stopped"
    assert not running[1].done()
    h.provider.hold.set()
    assert (await running[1]).kind == "replied"


async def test_anyone_may_forget_their_own_dm(h: DiscordHarness) -> None:
    dm = h.fake.dm_channel(h.alice)
    await h.say(h.alice, dm, "a private thing")
    answer = await h.fake.command(h.alice, dm, "forget")
    assert "forgotten" in answer["content"]
    assert await h.runtime.engine.memory.load(f"discord:dm:{h.alice['id']}", 10) == []


async def test_forget_me_deletes_the_callers_messages_and_ratings(h: DiscordHarness) -> None:
    _, mine = await h.say(h.alice, h.general, "my secret", mention_bot=True)
    _, bobs = await h.say(h.bob, h.general, "bob's question", mention_bot=True)
    await h.react(h.alice, h.reply_of(bobs)[0].id, UP)
    answer = await h.fake.command(h.alice, h.general, "forget-me")
    assert is_ephemeral(answer)
    assert "deleted 2 remembered messages" in answer["content"]  # alice's message and the answer to it
    # The reply to alice, and the reply to bob whose prompt quoted alice's message (with her rating).
    assert "2 reply records and ratings" in answer["content"]
    feedback = h.runtime.engine.feedback
    assert await feedback.get(mine.reply_id or "") is None
    assert await feedback.get(bobs.reply_id or "") is None
    turns = await h.runtime.engine.memory.load(f"discord:channel:{h.general['id']}", 10)
    assert [t.content for t in turns if t.role == "user"] == ["bob's question"]
    # Bob's data that never held alice's words stays.
    _, later = await h.say(h.bob, h.general, "bob again", mention_bot=True)
    await h.react(h.alice, h.reply_of(later)[0].id, UP)
    await h.fake.command(h.alice, h.general, "forget-me")
    assert await feedback.get(later.reply_id or "") is not None
    assert await feedback.ratings(later.reply_id or "") == {}


async def test_feedback_summary_for_admins(h: DiscordHarness) -> None:
    _, one = await h.say(h.alice, h.general, "one", mention_bot=True)
    _, two = await h.say(h.alice, h.general, "two", mention_bot=True)
    await h.react(h.alice, h.reply_of(one)[0].id, UP)
    await h.react(h.bob, h.reply_of(one)[0].id, UP)
    await h.react(h.bob, h.reply_of(two)[0].id, DOWN)
    refused = await h.fake.command(h.alice, h.general, "feedback")
    assert is_ephemeral(refused) and "Manage Channels" in refused["content"]
    answer = await h.fake.command(h.admin, h.general, "feedback")
    assert is_ephemeral(answer)
    assert "Ratings of **Ada** (`assistant`)" in answer["content"]
    assert "2 replies, 3 ratings, 👍 67%" in answer["content"]


# -- ratings ------------------------------------------------------------------------------------


async def test_reactions_rate_the_reply(h: DiscordHarness) -> None:
    message, outcome = await h.say(h.alice, h.general, "rate me", mention_bot=True)
    [reply] = h.reply_of(outcome)
    alice = f"discord:{h.alice['id']}"
    assert await h.ratings_of(outcome) == {}, "the bot's own hint reactions are not ratings"
    assert await h.react(h.alice, reply.id, UP) == "rated"
    assert await h.ratings_of(outcome) == {alice: 1}
    contexts = await h.runtime.feedback.rating_contexts(outcome.reply_id or "")
    assert contexts[alice]["discord_message_id"] == str(reply.id)
    assert contexts[alice]["discord_channel_id"] == h.general["id"]
    assert contexts[alice]["discord_guild_id"] == str(h.guild.id)
    assert contexts[alice]["discord_user_id"] == h.alice["id"]
    # Changing the reaction changes the one rating; removing the old one leaves the new one.
    assert await h.react(h.alice, reply.id, DOWN) == "rated"
    assert await h.react(h.alice, reply.id, UP, add=False) == "ignored"
    assert await h.ratings_of(outcome) == {alice: -1}
    assert await h.react(h.alice, reply.id, DOWN, add=False) == "withdrawn"
    assert await h.ratings_of(outcome) == {}
    # Skin tones count; other emoji, bots, and messages that are not replies do not.
    assert await h.react(h.bob, reply.id, UP + "\N{EMOJI MODIFIER FITZPATRICK TYPE-4}") == "rated"
    assert await h.react(h.alice, reply.id, "\N{RED APPLE}") == "ignored"
    assert await h.react(h.other_bot, reply.id, UP) == "ignored"
    assert await h.react(h.bob, int(message["id"]), DOWN) == "ignored"
    assert await h.ratings_of(outcome) == {f"discord:{h.bob['id']}": 1}


async def test_every_message_of_a_split_reply_rates_the_same_reply(h: DiscordHarness) -> None:
    h.provider.queue.append("\n\n".join(["A paragraph of words. " * 40] * 5))
    _, outcome = await h.say(h.alice, h.general, "long one", mention_bot=True)
    messages = h.reply_of(outcome)
    assert len(messages) >= 2
    await h.react(h.alice, messages[0].id, UP)
    await h.react(h.bob, messages[-1].id, DOWN)
    assert await h.ratings_of(outcome) == {f"discord:{h.alice['id']}": 1, f"discord:{h.bob['id']}": -1}


async def test_rating_hints_can_be_switched_off(settings: Settings) -> None:
    async with DiscordHarness.running(settings, rating_reactions=False) as h:
        _, outcome = await h.say(h.alice, h.general, "no hints", mention_bot=True)
        assert h.fake.bot_reactions_on(h.reply_of(outcome)[0].id) == []


# -- personas with their own identity (webhooks) ------------------------------------------------


async def test_a_persona_with_an_identity_posts_through_a_webhook(h: DiscordHarness) -> None:
    await h.fake.command(h.admin, h.general, "persona set", persona="captain")
    _, outcome = await h.say(h.alice, h.general, "ahoy @everyone", mention_bot=True)
    [reply] = h.reply_of(outcome)
    assert reply.via == "webhook"
    assert reply.payload["author"]["username"] == "Captain Redbeard"
    assert reply.content == "[Captain Redbeard] You said: ahoy @everyone"
    assert all(a == {"parse": []} for a in reply.allowed_mentions)
    assert len(reply.contents) >= 2, "streamed through webhook edits"
    assert len(h.fake.webhooks) == 1
    # A reply to the persona's webhook message is a reply to the bot; the webhook is reused.
    _, follow = await h.say(h.bob, h.general, "and you?", reply_to=reply.id)
    assert follow.kind == "replied" and h.reply_of(follow)[0].via == "webhook"
    assert len(h.fake.webhooks) == 1
    assert await h.react(h.alice, reply.id, UP) == "rated"


async def test_without_manage_webhooks_a_persona_posts_as_the_bot(settings: Settings) -> None:
    h = DiscordHarness(settings)
    [bot_role] = [r for r in h.guild.roles if r["name"] == "PersonaBot"]
    bot_role["permissions"] = str(p.MEMBER)
    async with h.run():
        await h.fake.command(h.admin, h.general, "persona set", persona="captain")
        _, outcome = await h.say(h.alice, h.general, "ahoy", mention_bot=True)
        [reply] = h.reply_of(outcome)
        assert reply.via == "channel" and reply.content == "[Captain Redbeard] You said: ahoy"
        assert h.fake.webhooks == {}
