"""The feedback report from a real Redis: counts, Wilson intervals, medians, comparisons, --since,
JSON, the self-contained HTML page, and no key scans."""

from __future__ import annotations

import json
import re
from datetime import date, datetime

import pytest

from bot.domain.feedback import Rating, ReplyRecord
from bot.domain.stats import two_proportion_test, wilson_interval
from bot.feedback.redis_log import RedisFeedbackLog
from bot.feedback.report import Counts, build_report, parse_since, render_html, time_buckets
from bot.redis_conn import RedisHandle


def ts(day: str, hour: int = 12) -> float:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00").timestamp()


def record(
    rid: str, variant: str, day: str, *, reply: str = "Arr!", latency: float = 1.0, version: str = "1"
) -> ReplyRecord:
    return ReplyRecord(
        reply_id=rid,
        conversation_id="c",
        user_id="u",
        persona_id="captain",
        persona_version=version,
        model="m",
        backend="scripted",
        adapter=None,
        generation={},
        prompt_messages=[{"role": "user", "content": "hi"}],
        reply=reply,
        latency_s=latency,
        first_token_s=None,
        prompt_tokens=1,
        completion_tokens=1,
        system_prompt_hash="h",
        variant=variant,
        created_at=ts(day),
    )


@pytest.fixture
async def log(redis_handle: RedisHandle) -> RedisFeedbackLog:
    return RedisFeedbackLog(redis_handle)


async def add(
    log: RedisFeedbackLog, variant: str, day: str, ups: int, downs: int, unrated: int = 0, **kw: object
) -> None:
    """Replies on `day`: `ups` liked, `downs` disliked (one rating each), `unrated` with none."""
    for i in range(ups + downs + unrated):
        rid = f"{variant}-{day}-{i}"
        await log.record(record(rid, variant, day, **kw))  # type: ignore[arg-type]
        if i < ups + downs:
            await log.rate(Rating(rid, f"user{i}", 1 if i < ups else -1))


async def test_counts_rates_and_intervals(log: RedisFeedbackLog) -> None:
    await add(log, "control", "2024-05-01", ups=30, downs=20, unrated=5, latency=2.0, reply="x" * 40)
    await add(log, "terse", "2024-05-01", ups=45, downs=5, latency=1.0, reply="x" * 10)
    report = await build_report(log)
    control, terse = report.groups
    assert (control.key.variant, control.counts) == ("control", Counts(replies=55, ups=30, downs=20))
    assert control.counts.up_rate == pytest.approx(0.6)
    assert control.counts.interval == pytest.approx(wilson_interval(30, 50))
    assert terse.counts.ratings == 50 and terse.counts.up_rate == pytest.approx(0.9)
    data = report.to_dict()["groups"][0]
    assert (
        data["median_latency_s"] == 2.0
        and data["median_length_chars"] == 40
        and data["sampled_records"] == 55
    )
    (comparison,) = report.comparisons()
    expected = two_proportion_test(30, 50, 45, 50)
    assert comparison.result.test.p_value == pytest.approx(expected.p_value)
    assert comparison.result.leader == "b" and comparison.result.significant
    assert (
        "terse is ahead of control by 30.0%" in comparison.sentence()
        and "significant at 5%" in comparison.sentence()
    )


async def test_comparison_says_how_many_more_ratings(log: RedisFeedbackLog) -> None:
    await add(log, "a", "2024-05-01", ups=11, downs=9)
    await add(log, "b", "2024-05-01", ups=9, downs=11)
    (comparison,) = (await build_report(log)).comparisons()
    more = comparison.result.more_total
    assert not comparison.result.significant and more is not None and more > 100
    assert f"about {more} more ratings needed" in comparison.sentence()
    data = (await build_report(log)).to_dict()["comparisons"][0]
    assert data["leader"] == "a" and data["more_ratings_needed"] == more


async def test_versions_are_separate_groups_and_not_compared(log: RedisFeedbackLog) -> None:
    await add(log, "default", "2024-05-01", ups=1, downs=1, version="1")
    await add(log, "default", "2024-05-02", ups=2, downs=0, version="2")
    report = await build_report(log)
    assert [(g.key.version, g.counts.ups) for g in report.groups] == [("1", 1), ("2", 2)]
    assert report.comparisons() == []


async def test_since_uses_daily_counters(log: RedisFeedbackLog) -> None:
    await add(log, "control", "2024-04-20", ups=0, downs=10)
    await add(log, "control", "2024-05-02", ups=8, downs=2)
    await add(log, "old", "2024-04-01", ups=1, downs=0)
    report = await build_report(log, since=date(2024, 5, 1))
    (group,) = report.groups  # "old" has nothing since May: left out
    assert group.counts == Counts(replies=10, ups=8, downs=2)
    assert len(group.latencies) == 10  # medians from records in the window only
    everything = await build_report(log)
    assert [g.counts.ratings for g in everything.groups] == [20, 1]


async def test_persona_filter_and_empty(log: RedisFeedbackLog) -> None:
    assert (await build_report(log)).render_text() == "No replies recorded yet."
    await add(log, "control", "2024-05-01", ups=1, downs=0)
    assert (await build_report(log, persona_id="nobody")).groups == []
    assert len((await build_report(log, persona_id="captain")).groups) == 1


async def test_report_reads_counters_without_scanning_keys(
    log: RedisFeedbackLog, redis_handle: RedisHandle
) -> None:
    await add(log, "control", "2024-05-01", ups=40, downs=10, unrated=50)
    client = redis_handle.client
    await client.config_resetstat()
    report = await build_report(log, sample=30)
    stats = await client.info("commandstats")
    assert not {"cmdstat_keys", "cmdstat_scan"} & set(stats)
    assert len(report.groups[0].latencies) == 30  # the median sample is bounded
    assert report.groups[0].counts.replies == 100


async def test_text_json_and_discord_outputs(log: RedisFeedbackLog) -> None:
    await add(log, "control", "2024-05-01", ups=3, downs=1)
    report = await build_report(log)
    text = report.render_text()
    assert re.search(r"captain\s+1\s+control\s+4\s+4\s+75\.0%\s+30\.1%–95\.4%\s+1\.00s\s+4 ch", text), text
    assert json.loads(report.to_json())["groups"][0]["ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert "**captain** v1 · control: 4 replies, 4 ratings, 👍 75% (30%–95%)" in report.discord_summary()
    assert len(report.discord_summary(limit=20)) == 20


async def test_html_is_self_contained_with_one_point_per_rated_day(log: RedisFeedbackLog) -> None:
    await add(log, "control", "2024-05-01", ups=3, downs=1)
    await add(log, "control", "2024-05-03", ups=1, downs=1)
    await add(log, "control", "2024-05-04", ups=0, downs=0, unrated=2)  # no ratings: no point
    await add(log, "<b>terse</b>", "2024-05-03", ups=2, downs=0)
    page = render_html(await build_report(log))
    assert page.startswith("<!doctype html>") and "<svg" in page
    assert "<script" not in page and not re.search(r"(src|href)=", page)
    assert page.count("<circle") == 3 and page.count("<polyline") == 1  # control: 2 points joined
    assert "<b>terse</b>" not in page and "&lt;b&gt;terse&lt;/b&gt;" in page
    assert "👍 3/4 = 75.0% (95% CI 30.1%–95.4%)" in page


def test_time_buckets_by_day_and_iso_week() -> None:
    daily = {"2024-05-06": Counts(1, 1, 0), "2024-05-08": Counts(1, 0, 1), "2024-05-13": Counts(2, 2, 0)}
    assert [d.isoformat() for d, _ in time_buckets(daily, weekly=False)] == [
        "2024-05-06",
        "2024-05-08",
        "2024-05-13",
    ]
    weeks = time_buckets(daily, weekly=True)
    assert weeks == [(date(2024, 5, 6), Counts(2, 1, 1)), (date(2024, 5, 13), Counts(2, 2, 0))]


def test_parse_since() -> None:
    today = date(2024, 5, 31)
    assert parse_since("2024-05-01") == date(2024, 5, 1)
    assert parse_since("7d", today) == date(2024, 5, 24)
    assert parse_since("2w", today) == date(2024, 5, 17)
    with pytest.raises(ValueError, match="not a date"):
        parse_since("last tuesday", today)
    assert parse_since(" 0D ", today) == today
