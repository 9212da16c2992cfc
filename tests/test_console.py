"""The console chat driven with piped input (a StringIO stdin), scripted backend, real Redis."""

from __future__ import annotations

import io

from bot.app import build_runtime
from bot.settings import Settings
from bot.transports.console import run_console


async def chat(settings: Settings, lines: list[str], persona: str = "assistant") -> str:
    out = io.StringIO()
    async with build_runtime(settings) as rt:
        await run_console(rt.engine, persona, user_name="Sam", conversation="t", stdin=io.StringIO(
            "".join(f"{line}\n" for line in lines)), out=out)
    return out.getvalue()


async def test_greeting_reply_and_transcript(settings: Settings) -> None:
    text = await chat(settings, ["hello bot"])
    assert "Chatting with Ada [assistant v1.0]" in text
    assert "Ada> Hi Sam! I'm Ada." in text
    assert "Sam> hello bot\nAda> [Ada] You said: hello bot\n" in text


async def test_second_session_remembers_and_reset_forgets(settings: Settings) -> None:
    await chat(settings, ["first message"])
    text = await chat(settings, ["again", "/reset"])
    assert "continuing the earlier conversation" in text and "Hi Sam!" not in text
    assert "(conversation forgotten)" in text
    assert "Hi Sam!" in await chat(settings, [])


async def test_rate_commands(settings: Settings) -> None:
    text = await chat(settings, ["/good", "rate this", "/rate up", "/bad", "/rate sideways"])
    assert "nothing to rate yet" in text
    assert text.count("(rated 👍") == 1 and text.count("(rated 👎") == 1
    assert "usage: /rate up|down" in text
    async with build_runtime(settings) as rt:
        rated = [r async for r in rt.feedback.iter_rated()]
    assert len(rated) == 1 and rated[0].ratings == {"console:Sam": -1}


async def test_persona_commands(settings: Settings) -> None:
    text = await chat(settings, ["/personas", "/persona captain", "ahoy", "/persona ghost", "/nope", "/help", "/quit",
                                 "never sent"])
    assert "* assistant" in text and "  captain" in text
    assert "(now chatting with Captain Redbeard)" in text
    assert "Captain Redbeard> [Captain Redbeard] You said: ahoy" in text
    assert "no persona 'ghost'" in text
    assert "unknown command /nope" in text
    assert "/rate up|down" in text
    assert "never sent" not in text


async def test_a_persona_new_to_the_conversation_greets_instead_of_continuing(settings: Settings) -> None:
    await chat(settings, ["hello Ada"])
    text = await chat(settings, [], persona="captain")
    assert "continuing the earlier conversation" not in text and "Captain Redbeard> Arr, ahoy Sam!" in text
    assert "continuing the earlier conversation" in await chat(settings, [])
    switched = await chat(settings, ["/persona captain", "/persona assistant"])
    assert "(now chatting with Captain Redbeard)\nCaptain Redbeard> Arr, ahoy Sam!" in switched, switched
    assert switched.rstrip().endswith("(now chatting with Ada)")  # Ada has: no second greeting
