"""Sticky weighted variant choice: deterministic, follows the weights, rotates per period."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.app import build_runtime
from bot.domain.feedback import prompt_hash
from bot.domain.messages import ChatRequest, Speaker
from bot.domain.persona import Persona
from bot.domain.variants import DEFAULT_VARIANT, choose_variant, period_bucket, pick_weighted, unit_hash
from bot.models.scripted import ScriptedChatModel
from bot.ports import BoundModel
from bot.settings import Settings

AB = [("control", 70.0), ("terse", 30.0)]
DAY = 24.0
T0 = 1_700_000_000.0
ROOT = Path(__file__).resolve().parents[1]


def test_no_variants_means_default() -> None:
    assert choose_variant("p", "conv", [], period_hours=DAY, now=T0) == DEFAULT_VARIANT


def test_same_conversation_same_variant_within_a_period() -> None:
    for i in range(200):
        conv = f"discord:chan:{i}"
        first = choose_variant("pirate", conv, AB, period_hours=DAY, now=T0)
        bucket = period_bucket(conv, T0, DAY, salt="pirate")
        # Every moment of the same bucket gives the same answer.
        for minutes in range(0, 24 * 60, 37):
            now = T0 + minutes * 60
            if period_bucket(conv, now, DAY, salt="pirate") == bucket:
                assert choose_variant("pirate", conv, AB, period_hours=DAY, now=now) == first


def test_choice_survives_a_restart() -> None:
    """A fresh interpreter with a different hash seed (string hashing salt) agrees."""
    convs = [f"c{i}" for i in range(50)]
    here = [choose_variant("pirate", c, AB, period_hours=DAY, now=T0) for c in convs]
    code = (
        "from bot.domain.variants import choose_variant;"
        f"print(','.join(choose_variant('pirate', c, {AB!r}, period_hours={DAY}, now={T0})"
        f" for c in {convs!r}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    assert out.stdout.strip().split(",") == here


def test_distribution_follows_weights() -> None:
    counts = Counter(choose_variant("pirate", f"conv-{i}", AB, period_hours=DAY, now=T0) for i in range(20_000))
    share = counts["terse"] / 20_000
    # Binomial sd at n=20000, p=0.3 is 0.0032: 5 sd of slack.
    assert share == pytest.approx(0.30, abs=0.016)


def test_three_way_split_and_zero_weight() -> None:
    weights = [("a", 1.0), ("off", 0.0), ("b", 1.0), ("c", 2.0)]
    counts = Counter(choose_variant("x", f"id{i}", weights, period_hours=0, now=T0) for i in range(12_000))
    assert counts["off"] == 0
    assert counts["c"] / 12_000 == pytest.approx(0.5, abs=0.025)
    assert counts["a"] / 12_000 == pytest.approx(0.25, abs=0.025)


def test_salt_makes_experiments_independent() -> None:
    convs = [f"conv-{i}" for i in range(2000)]
    a = [choose_variant("pirate", c, AB, period_hours=DAY, now=T0) for c in convs]
    b = [choose_variant("chef", c, AB, period_hours=DAY, now=T0) for c in convs]
    agree = sum(x == y for x, y in zip(a, b, strict=True)) / len(convs)
    # Independent 70/30 draws agree with probability 0.7² + 0.3² = 0.58.
    assert agree == pytest.approx(0.58, abs=0.05)


def test_period_rollover_reassigns_and_is_spread_out() -> None:
    convs = [f"conv-{i}" for i in range(500)]
    changed = 0
    for conv in convs:
        buckets = {period_bucket(conv, T0 + h * 3600, DAY, salt="p") for h in range(0, 24 * 10, 1)}
        assert len(buckets) in (10, 11)  # 10 days of 24-hour periods
        days = [choose_variant("p", conv, AB, period_hours=DAY, now=T0 + d * 86400) for d in range(10)]
        changed += len(set(days)) > 1
    # With 70/30 over 10 draws, staying on one variant has probability 0.7¹⁰ + 0.3¹⁰ ≈ 0.028.
    assert changed / len(convs) > 0.9

    # Rollover moments are spread: conversations switch buckets at different hours.
    def first_switch(conv: str) -> int:
        start = period_bucket(conv, T0, DAY, salt="p")
        return next(h for h in range(1, 25) if period_bucket(conv, T0 + h * 3600, DAY, salt="p") != start)

    switch_hours = Counter(first_switch(c) for c in convs)
    assert len(switch_hours) >= 20


def test_zero_period_never_rotates() -> None:
    for conv in ("a", "b", "c"):
        first = choose_variant("p", conv, AB, period_hours=0, now=T0)
        assert all(
            choose_variant("p", conv, AB, period_hours=0, now=T0 + years * 3.15e7) == first for years in range(20)
        )


def test_pick_weighted_boundaries() -> None:
    assert pick_weighted(AB, 0.0) == "control"
    assert pick_weighted(AB, 0.6999) == "control"
    assert pick_weighted(AB, 0.7001) == "terse"
    assert pick_weighted(AB, 0.999999999) == "terse"
    with pytest.raises(ValueError):
        pick_weighted([("a", 0.0)], 0.5)


def test_unit_hash_is_uniform_enough() -> None:
    values = [unit_hash("x", str(i)) for i in range(10_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    deciles = Counter(int(v * 10) for v in values)
    assert all(900 < deciles[d] < 1100 for d in range(10))


# -- persona variants (bot.domain.persona.Variant / Persona.with_variant) ------------------------


def pirate(**extra: object) -> Persona:
    base: dict[str, object] = {
        "id": "captain",
        "name": "Captain",
        "system_prompt": "You are a pirate talking to {user_name}.",
        "generation": {"temperature": 0.7, "max_new_tokens": 96},
        "adapter": "adapters/pirate",
    }
    return Persona.model_validate({**base, **extra})


def test_variant_overrides_prompt_generation_and_adapter() -> None:
    persona = pirate(
        variants=[
            {"id": "control", "weight": 50},
            {
                "id": "terse",
                "weight": 50,
                "system_prompt": "Pirate. Short. Talk to {user_name}.",
                "generation": {"temperature": 0.2},
                "adapter": "adapters/terse",
            },
        ],
        variant_period_hours=12,
    )
    control, terse = persona.with_variant("control"), persona.with_variant("terse")
    assert control.system_prompt == persona.system_prompt and control.generation == persona.generation
    assert terse.system_prompt.startswith("Pirate. Short.")
    assert terse.generation.temperature == 0.2 and terse.generation.max_new_tokens == 96
    assert (control.adapter, terse.adapter) == ("adapters/pirate", "adapters/terse")
    assert persona.variant_period_hours == 12 and terse.id == persona.id and terse.version == persona.version


def test_default_variant_and_unknown_variant() -> None:
    plain = pirate()
    assert plain.variants == () and plain.with_variant(DEFAULT_VARIANT) is plain
    with pytest.raises(KeyError, match="no variant 'nope'"):
        pirate(variants=[{"id": "a"}]).with_variant("nope")


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([{"id": "a"}, {"id": "a"}], "variant ids must be unique"),
        ([{"id": "a", "weight": 0}], "at least one variant needs a weight above 0"),
        ([{"id": "a", "generation": {"temperature": 9}}], "variant 'a': generation.temperature"),
        ([{"id": "a", "generation": {"beam_width": 3}}], "variant 'a': generation.beam_width"),
        ([{"id": "a", "system_prompt": "Hi {nobody}"}], "unknown variable"),
        ([{"id": "Bad Id"}], "String should match pattern"),
        ([{"id": "a", "weight": -1}], "greater than or equal to 0"),
    ],
)
def test_invalid_variants_are_rejected(variants: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        pirate(variants=variants)


def test_persona_variants_feed_the_sticky_choice() -> None:
    persona = pirate(variants=[{"id": "control", "weight": 3}, {"id": "terse", "weight": 1}])
    weights = [(v.id, v.weight) for v in persona.variants]
    counts = Counter(
        choose_variant(persona.id, f"c{i}", weights, period_hours=persona.variant_period_hours, now=T0)
        for i in range(8000)
    )
    assert counts["terse"] / 8000 == pytest.approx(0.25, abs=0.025)


# -- the engine stamps the variant on every reply record ------------------------------------------

AB_PERSONA = """
id: abtest
name: Tester
version: "3"
system_prompt: "You are the control prompt."
variants:
  - {id: control, weight: 1}
  - {id: short, weight: 1, system_prompt: "You are the short prompt.", generation: {max_new_tokens: 32}}
variant_period_hours: 24
"""


class ScriptedProvider:
    def bind(self, persona: Persona) -> BoundModel:
        return BoundModel(ScriptedChatModel(persona_name=persona.name), "scripted", "scripted", None, 4096, len)


async def test_engine_records_the_sticky_variant_and_its_prompt(settings: Settings) -> None:
    (settings.personas_dir / "abtest.yaml").write_text(AB_PERSONA)
    async with build_runtime(settings, model_provider=ScriptedProvider()) as runtime:
        engine, seen = runtime.engine, {}
        for i in range(12):
            for turn in range(2):  # a second message in the same conversation keeps the variant
                done = await engine.reply(ChatRequest(f"conv{i}", Speaker("u", "U"), f"hi {turn}", persona_id="abtest"))
                record = done.record
                seen.setdefault(record.conversation_id, record.variant)
                assert record.variant == seen[record.conversation_id]
                assert record.variant == engine.variant_for(engine.personas.get("abtest"), f"conv{i}")
                expected = "You are the short prompt." if record.variant == "short" else "You are the control prompt."
                assert record.prompt_messages[0]["content"] == expected
                assert record.system_prompt_hash == prompt_hash(expected)
                assert record.generation["max_new_tokens"] == (32 if record.variant == "short" else 256)
                assert (await runtime.feedback.get(record.reply_id)) == record
        assert set(seen.values()) == {"control", "short"}  # 12 conversations: both arms served
        plain = await engine.reply(ChatRequest("conv0", Speaker("u", "U"), "hi"))
        assert plain.record.variant == DEFAULT_VARIANT
