"""The feedback report: per persona, version and variant, how well do replies land?

Numbers come from the counters the feedback log updates on every reply and rating (kept forever,
read in O(groups) — never a scan of the replies): replies, ratings, 👍 rate with a 95 % Wilson
interval, per day for `--since` and the chart. Medians of latency and length need the reply
records, which expire with the prompt retention: they are taken from the newest `sample` records
in the window (so they describe recent traffic). Ratings count on the day of the reply they rate.
Variants of the same persona version are compared pairwise with a two-proportion z-test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html import escape
from itertools import combinations
from typing import TYPE_CHECKING, Any

from bot.domain.stats import Comparison, compare, median, wilson_interval
from bot.domain.table import percent, render_table
from bot.ports import FeedbackLog

if TYPE_CHECKING:
    from bot.refine.store import RefineStore

DEFAULT_SAMPLE = 20_000


@dataclass(frozen=True, slots=True, order=True)
class GroupKey:
    persona: str
    version: str
    variant: str

    @classmethod
    def parse(cls, stats_key: str) -> GroupKey:
        persona, version, variant = stats_key.split("|", 2)
        return cls(persona, version, variant)

    @property
    def label(self) -> str:
        return f"{self.persona} v{self.version} [{self.variant}]"


@dataclass(frozen=True, slots=True)
class Counts:
    replies: int = 0
    ups: int = 0
    downs: int = 0

    @property
    def ratings(self) -> int:
        return self.ups + self.downs

    @property
    def up_rate(self) -> float | None:
        return self.ups / self.ratings if self.ratings else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.ups, self.ratings)

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.replies + other.replies, self.ups + other.ups, self.downs + other.downs)


@dataclass
class GroupReport:
    key: GroupKey
    counts: Counts
    daily: dict[str, Counts] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.counts.interval
        return {
            "persona": self.key.persona,
            "version": self.key.version,
            "variant": self.key.variant,
            "replies": self.counts.replies,
            "ratings": self.counts.ratings,
            "ups": self.counts.ups,
            "downs": self.counts.downs,
            "up_rate": self.counts.up_rate,
            "ci95": [low, high] if self.counts.ratings else None,
            "median_latency_s": median(self.latencies),
            "median_length_chars": median(self.lengths),
            "sampled_records": len(self.latencies),
            "daily": {d: {"replies": c.replies, "ups": c.ups, "downs": c.downs} for d, c in self.daily.items()},
        }


@dataclass(frozen=True, slots=True)
class VariantComparison:
    a: GroupKey
    b: GroupKey
    result: Comparison

    def sentence(self) -> str:
        r = self.result
        name = f"{self.a.persona} v{self.a.version}"
        if r.leader is None:
            return f"{name}: {self.a.variant} and {self.b.variant} are level so far."
        ahead, behind = (self.a, self.b) if r.leader == "a" else (self.b, self.a)
        gap = percent(abs(r.test.difference))
        head = f"{name}: {ahead.variant} is ahead of {behind.variant} by {gap} (p = {r.test.p_value:.3f})"
        if r.significant:
            return f"{head}: significant at {percent(r.alpha, 0)}."
        if r.more_total is None:
            return f"{head}: not significant yet."
        return f"{head}: not significant yet; about {r.more_total} more ratings needed (80% power)."

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "a": self.a.variant,
            "b": self.b.variant,
            "persona": self.a.persona,
            "version": self.a.version,
            "leader": {"a": self.a.variant, "b": self.b.variant}.get(r.leader or ""),
            "difference": r.test.difference,
            "z": r.test.z,
            "p_value": r.test.p_value,
            "significant": r.significant,
            "needed_per_group": r.needed_per_group,
            "more_ratings_needed": r.more_total,
            "summary": self.sentence(),
        }


@dataclass
class RefineSummary:
    """A persona's refinement loop in the report: the running experiment and the latest journal."""

    persona: str
    experiment: dict[str, Any] | None
    journal: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        e = self.experiment
        if e is not None:
            started = datetime.fromtimestamp(e["started_at"], UTC).strftime("%Y-%m-%d")
            state = e.get("last", {}).get("reason", "not checked yet")
            wait = " (waiting for approval)" if e.get("status") == "awaiting_approval" else ""
            out.append(f"{self.persona}: canary {e['canary']} ({e['candidate'].get('proposer')}) on "
                       f"{percent(e['fraction'], 0)} of v{e['parent_version']} since {started}{wait}: {state}")
        for entry in self.journal:
            when = datetime.fromtimestamp(entry["at"], UTC).strftime("%Y-%m-%d %H:%M")
            out.append(f"{self.persona} {when} {entry['kind']}: {entry['summary']}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"persona": self.persona, "experiment": self.experiment, "journal": self.journal}


@dataclass
class FeedbackReport:
    groups: list[GroupReport]
    since: date | None = None
    generated_at: float = 0.0
    refine: list[RefineSummary] = field(default_factory=list)

    def comparisons(self) -> list[VariantComparison]:
        by_version: dict[tuple[str, str], list[GroupReport]] = {}
        for g in self.groups:
            by_version.setdefault((g.key.persona, g.key.version), []).append(g)
        out = []
        for members in by_version.values():
            for a, b in combinations(sorted(members, key=lambda g: g.key), 2):
                result = compare(a.counts.ups, a.counts.ratings, b.counts.ups, b.counts.ratings)
                out.append(VariantComparison(a.key, b.key, result))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at,
            "since": self.since.isoformat() if self.since else None,
            "groups": [g.to_dict() for g in self.groups],
            "comparisons": [c.to_dict() for c in self.comparisons()],
            "refine": [r.to_dict() for r in self.refine],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def render_text(self) -> str:
        if not self.groups:
            return "No replies recorded" + (f" since {self.since}." if self.since else " yet.")
        # "up rate", not "👍 rate": an emoji is two terminal columns wide and would skew the table.
        headers = ["persona", "version", "variant", "replies", "ratings", "up rate", "95% CI", "latency", "length"]
        rows = [_text_row(g) for g in self.groups]
        parts = [render_table(headers, rows, right=(3, 4, 5, 7, 8))]
        parts += [c.sentence() for c in self.comparisons()]
        refine = [line for r in self.refine for line in r.lines()]
        if refine:
            parts.append("Refinement (anytime-valid: safe to read after every rating):\n" + "\n".join(refine))
        if self.since:
            parts.append(f"Replies created since {self.since} (ratings count on the day of the reply).")
        return "\n\n".join(parts)

    def discord_summary(self, limit: int = 1900) -> str:
        """The same numbers for Discord's `/feedback` (a message holds at most 2000 characters)."""
        lines = []
        for g in self.groups:
            c = g.counts
            rate = "no ratings yet" if c.up_rate is None else f"👍 {percent(c.up_rate, 0)} ({_ci(c, 0)})"
            head = f"**{g.key.persona}** v{g.key.version} · {g.key.variant}"
            lines.append(f"{head}: {c.replies} replies, {c.ratings} ratings, {rate}")
        lines += [c.sentence() for c in self.comparisons()]
        for r in self.refine:  # the running experiment and the last step only: a message is short
            lines += r.lines()[: 1 + (r.experiment is not None)]
        text = "\n".join(lines) or "No replies recorded yet."
        return text if len(text) <= limit else text[: limit - 1] + "…"


def _ci(c: Counts, digits: int = 1) -> str:
    low, high = c.interval
    return f"{percent(low, digits)}–{percent(high, digits)}"


def _text_row(g: GroupReport) -> list[object]:
    c = g.counts
    lat, length = median(g.latencies), median(g.lengths)
    return [
        g.key.persona,
        g.key.version,
        g.key.variant,
        c.replies,
        c.ratings,
        percent(c.up_rate),
        _ci(c) if c.ratings else "-",
        None if lat is None else f"{lat:.2f}s",
        None if length is None else f"{length:.0f} ch",
    ]


# -- building the report from the feedback log ---------------------------------------------------


def _counts(raw: dict[str, int]) -> Counts:
    return Counts(raw.get("replies", 0), raw.get("up", 0), raw.get("down", 0))


async def build_report(
    log: FeedbackLog,
    *,
    persona_id: str | None = None,
    since: date | None = None,
    sample: int = DEFAULT_SAMPLE,
    now: datetime | None = None,
    refine: RefineStore | None = None,
    journal: int = 5,
) -> FeedbackReport:
    """Counters for every persona/version/variant (optionally one persona, replies since a day)."""
    now = now or datetime.now(UTC)
    groups: dict[GroupKey, GroupReport] = {}
    for sk, raw in (await log.stats()).items():
        key = GroupKey.parse(sk)
        if persona_id is not None and key.persona != persona_id:
            continue
        daily = {d: _counts(c) for d, c in (await log.daily(sk)).items() if since is None or d >= since.isoformat()}
        total = sum(daily.values(), Counts()) if since is not None else _counts(raw)
        if since is not None and total.replies == 0:
            continue
        groups[key] = GroupReport(key, total, daily)
    await _add_medians(log, groups, since, sample)
    summaries = await _refine(refine, persona_id, journal) if refine is not None else []
    return FeedbackReport([groups[k] for k in sorted(groups)], since, now.timestamp(), summaries)


async def _refine(store: RefineStore, persona_id: str | None, journal: int) -> list[RefineSummary]:
    out = []
    for pid in [persona_id] if persona_id else await store.personas():
        experiment = await store.experiment(pid)
        entries = await store.entries(pid, journal)
        if experiment is None and not entries:
            continue
        out.append(RefineSummary(pid, None if experiment is None else experiment.to_dict(),
                                 [{"at": e.at, "kind": e.kind, "summary": e.summary} for e in entries]))
    return out


async def _add_medians(
    log: FeedbackLog, groups: dict[GroupKey, GroupReport], since: date | None, sample: int
) -> None:
    if not groups or sample <= 0:
        return
    low = datetime.combine(since, datetime.min.time(), UTC).timestamp() if since else "-inf"
    async for record in log.recent(low, sample):
        group = groups.get(GroupKey(record.persona_id, record.persona_version, record.variant))
        if group is not None:
            group.latencies.append(record.latency_s)
            group.lengths.append(len(record.reply))


def parse_since(text: str, today: date | None = None) -> date:
    """`2024-05-01`, or a relative `7d` / `4w` back from today (UTC)."""
    text = text.strip().lower()
    today = today or datetime.now(UTC).date()
    if text[:-1].isdigit() and text[-1:] in ("d", "w"):
        return today - timedelta(days=int(text[:-1]) * (7 if text.endswith("w") else 1))
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use YYYY-MM-DD, or 7d / 4w)") from None


# -- the self-contained HTML page ----------------------------------------------------------------

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_W, _H, _L, _R, _T, _B, _PAD = 860, 370, 52, 16, 16, 74, 14  # size, margins, inner x padding


def time_buckets(daily: dict[str, Counts], weekly: bool) -> list[tuple[date, Counts]]:
    """Daily counters summed per day or per ISO week (keyed by its Monday), oldest first."""
    out: dict[date, Counts] = {}
    for day_text, counts in daily.items():
        day = date.fromisoformat(day_text)
        start = day - timedelta(days=day.weekday()) if weekly else day
        out[start] = out.get(start, Counts()) + counts
    return sorted(out.items())


def _el(name: str, body: str = "", **attrs: object) -> str:
    """One SVG/HTML element; attribute values are escaped, `body` is trusted markup."""
    text = "".join(f' {k.rstrip("_").replace("_", "-")}="{escape(str(v))}"' for k, v in attrs.items())
    return f"<{name}{text}>{body}</{name}>"


def _whisker(px: float, c: Counts, y: Callable[[float], float], color: str, tip: str) -> str:
    low, high = (y(v) for v in c.interval)
    lines = [
        _el("line", x1=f"{px:.1f}", x2=f"{px:.1f}", y1=f"{low:.1f}", y2=f"{high:.1f}"),
        _el("line", x1=f"{px - 3:.1f}", x2=f"{px + 3:.1f}", y1=f"{low:.1f}", y2=f"{low:.1f}"),
        _el("line", x1=f"{px - 3:.1f}", x2=f"{px + 3:.1f}", y1=f"{high:.1f}", y2=f"{high:.1f}"),
        _el(
            "circle",
            _el("title", escape(tip)),
            cx=f"{px:.1f}",
            cy=f"{y(c.up_rate or 0):.1f}",
            r=3.5,
            fill=color,
        ),
    ]
    return _el("g", "".join(lines), stroke=color)


def _legend_item(i: int, count: int, label: str, color: str) -> str:
    step = min(200.0, (_W - _L - _R) / max(1, count))
    left, top = _L + i * step, _H - 22
    swatch = _el("rect", x=f"{left:.1f}", y=top - 9, width=10, height=10, fill=color)
    return swatch + _el("text", escape(label), x=f"{left + 14:.1f}", y=top, class_="legend")


def _svg_chart(report: FeedbackReport, weekly: bool) -> str:
    series = [(g, [(d, c) for d, c in time_buckets(g.daily, weekly) if c.ratings]) for g in report.groups]
    days = [d for _, points in series for d, _ in points]
    if not days:
        return "<p>No ratings to chart yet.</p>"
    first, last = min(days), max(days)
    width, height = _W - _L - _R, _H - _T - _B

    def x(d: date) -> float:
        return _L + _PAD + (0.5 if last == first else (d - first).days / (last - first).days) * (width - 2 * _PAD)

    def y(rate: float) -> float:
        return _T + (1 - rate) * height

    body = []
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        body.append(_el("line", x1=_L, x2=_W - _R, y1=f"{y(tick):.1f}", y2=f"{y(tick):.1f}", class_="grid"))
        body.append(_el("text", percent(tick, 0), x=_L - 6, y=f"{y(tick) + 4:.1f}", class_="ytick"))
    for d in sorted({first, last, first + (last - first) / 2}):
        body.append(_el("text", d.isoformat(), x=f"{x(d):.1f}", y=_H - _B + 18, class_="xtick"))
    for i, (group, points) in enumerate(series):
        color, shift = PALETTE[i % len(PALETTE)], (i - (len(series) - 1) / 2) * 4  # side by side, not on top
        coords = [(x(d) + shift, d, c) for d, c in points]
        if len(coords) > 1:
            line = " ".join(f"{px:.1f},{y(c.up_rate or 0):.1f}" for px, _, c in coords)
            body.append(_el("polyline", points=line, fill="none", stroke=color, stroke_width=1.5))
        for px, d, c in coords:
            tip = f"{group.key.label} {d}: 👍 {c.ups}/{c.ratings} = {percent(c.up_rate)} (95% CI {_ci(c)})"
            body.append(_whisker(px, c, y, color, tip))
        body.append(_legend_item(i, len(series), group.key.label, color))
    return _el("svg", "".join(body), xmlns="http://www.w3.org/2000/svg", viewBox=f"0 0 {_W} {_H}", role="img")


_CSS = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse}
td,th{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:left}td.n{text-align:right}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto}
svg{max-width:100%;height:auto}.grid{stroke:#e5e5e5}.ytick,.xtick{font-size:11px;fill:#666}
.legend{font-size:12px}.ytick{text-anchor:end}.xtick{text-anchor:middle}.swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem}"""

_HEAD = (
    "persona",
    "version",
    "variant",
    "replies",
    "ratings",
    "👍 rate",
    "95% CI",
    "median latency",
    "median length",
)


def _html_row(i: int, group: GroupReport) -> str:
    cells = [escape(str("-" if v is None else v)) for v in _text_row(group)]
    swatch = _el("span", "", class_="swatch", style=f"background:{PALETTE[i % len(PALETTE)]}")
    tds = [
        _el("td", swatch + cells[0]),
        *(_el("td", c) for c in cells[1:3]),
        *(_el("td", c, class_="n") for c in cells[3:]),
    ]
    return _el("tr", "".join(tds))


def render_html(report: FeedbackReport, *, weekly: bool | None = None, gate_html: str = "") -> str:
    """One self-contained page (inline CSS and SVG, no scripts, nothing fetched); `gate_html`, the
    refine gate's section (bot.refine.gate.GateReport.render_html), is added at the end."""
    days = sorted({date.fromisoformat(d) for g in report.groups for d in g.daily})
    if weekly is None:
        weekly = bool(days) and (days[-1] - days[0]).days > 45  # daily points get too dense
    table = _el(
        "table",
        _el("tr", "".join(_el("th", escape(h)) for h in _HEAD))
        + "".join(_html_row(i, g) for i, g in enumerate(report.groups)),
    )
    notes = "".join(_el("li", escape(c.sentence())) for c in report.comparisons())
    generated = datetime.fromtimestamp(report.generated_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    scope = f"replies since {report.since}" if report.since else "all replies"
    body = [
        _el("h1", "Feedback report"),
        _el("p", escape(f"{scope} · generated {generated}")),
        table,
        _el("h2", "Comparisons"),
        _el("ul", notes or _el("li", "No persona version has two variants yet.")),
        _el("h2", f"👍 rate per {'week' if weekly else 'day'} (95% Wilson intervals)"),
        _svg_chart(report, weekly),
        _el("p", "Ratings count on the day of the reply they rate. Hover a point for its numbers."),
    ]
    refine = [line for r in report.refine for line in r.lines()]
    if refine:
        body += [_el("h2", "Refinement"), _el("ul", "".join(_el("li", escape(line)) for line in refine))]
    if gate_html:
        body.append(gate_html)
    return page("Feedback report", "".join(body))


def page(title: str, body: str) -> str:
    """A self-contained HTML page with the report's style around trusted `body` markup."""
    head = '<meta charset="utf-8">' + _el("title", escape(title)) + _el("style", _CSS)
    return "<!doctype html>" + _el("html", _el("head", head) + _el("body", body), lang="en")
