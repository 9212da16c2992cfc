"""Fuzzing the persona loader (and the eval-suite loader, and templates) with hypothesis.

A few hundred mutated and generated files, seeded (derandomize: the same files on every run) and
bounded in time. Any traceback, hang, or problem reported without its file and line fails.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.domain.persona import PROMPT_VARIABLES
from bot.domain.templates import TemplateError, check_template, render_template
from bot.errors import PersonaFileError
from bot.evals.loader import load_suite
from bot.personas.loader import load_directory

REPO = Path(__file__).resolve().parent.parent
SEEDS = [p.read_bytes() for p in sorted((REPO / "personas").glob("*.yaml"))]
SUITES = [p.read_bytes() for p in sorted((REPO / "personas" / "tests").glob("*.yaml"))]
ANCHOR = b"id: zz-anchor\nname: Anchor\nsystem_prompt: I always load, {user_name}.\n"

FUZZ = settings(
    max_examples=300, derandomize=True, database=None, deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Pieces that have broken YAML loaders and template engines.
TOKENS = [
    b"{", b"}", b"{{", b"}}", b"{date:%Y}", b"{user_name:{channel}}", b"{user_name!r}", b"{0}", b"{a.b}",
    b"{user_name:>300000000}", b"&a [x, x]", b"*a", b"*nope", b"[", b"]", b"{a: ", b'"', b"'", b"\\x01",
    b'"\\ud800"', b"\x01", b"\x00", b"\x1b[2J", b"\t", b"\r", b"\xff\xfe", b"\xef\xbb\xbf", b"\xc3", b"\xed\xa0\x80",
    b"---\n", b"...\n", b"!!python/object:os.system", b"!!binary", b"? [a]\n: b\n", b"<<: *a\n", b"~", b"null",
    b"9" * 5000, b"1e999", b"-.inf", b"0x" + b"f" * 50, b"[" * 300 + b"]" * 300, b"- " * 200, b"  ", b"\n",
    b"version: ", b"examples:\n  - user: a\n    assistant: b\n", b"adapter: ../../../../etc\n",
    b"adapter: file:///etc/passwd\n", b"adapter: /\n", b"id: zz-anchor\n", b"%YAML 1.1\n", b"#", b"|", b">-",
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["token", "bytes", "delete", "repeat"]))
        if kind == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "bytes":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        else:
            end = min(len(data), at + draw(st.integers(1, 60)))
            data[at:at] = bytes(data[at:end]) * draw(st.integers(2, 50))
    return bytes(data)


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40),
    st.sampled_from(["{user_name}", "{date:%Y}", "{", "}", "{nope}", "adapters/captain-lora", "x" * 2000]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=12), inner, max_size=4), max_leaves=30)
FIELDS = ["id", "name", "description", "version", "system_prompt", "greeting", "examples", "generation",
          "model", "adapter", "memory", "identity", "variants", "variant_period_hours", "tests", "bogus"]


@st.composite
def generated(draw: st.DrawFn) -> bytes:
    document: dict[str, Any] = {"id": "fuzzed", "name": "Fuzzed", "system_prompt": "Hi {user_name}"}
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=5)):
        document[key] = draw(VALUES)
    return yaml.safe_dump(document, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")


def check_directory(contents: bytes, name: str = "fuzzed.yaml") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "0-anchor.yaml").write_bytes(ANCHOR)
        (directory / name).write_bytes(contents)
        result = load_directory(directory, adapters_root=REPO / "adapters")
        assert "zz-anchor" in result.personas, [str(e) for e in result.errors]
        for error in result.errors:
            assert isinstance(error, PersonaFileError)
            assert error.path == directory / name, str(error)
            assert error.line is not None and error.line >= 1, f"no line: {error}"
            assert "Traceback" not in str(error)
            assert error.message and "\n" not in str(error), f"not one line: {error!r}"
        if not result.errors:
            assert set(result.personas) >= {"zz-anchor"}


@FUZZ
@given(mutated(SEEDS))
def test_mutated_persona_files_never_crash_or_hang(contents: bytes) -> None:
    check_directory(contents)


@settings(FUZZ, max_examples=150)
@given(generated())
def test_generated_persona_documents_give_located_errors(contents: bytes) -> None:
    check_directory(contents)


@settings(FUZZ, max_examples=100)
@given(mutated(SUITES))
def test_mutated_eval_suites_never_crash(contents: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "tests").mkdir()
        (directory / "tests" / "captain.yaml").write_bytes(contents)
        try:
            load_suite(directory, "captain")
        except PersonaFileError as exc:
            problems = getattr(exc, "problems", (exc,))
            assert all(p.path.name == "captain.yaml" and p.line is not None for p in problems), str(exc)


@settings(FUZZ, max_examples=300)
@given(st.lists(st.sampled_from([*"{}:!.[]0 ab_", "user_name", "date", "{{", "}}"]), max_size=30).map("".join))
def test_templates_are_checked_or_rejected_and_render_never_raises(template: str) -> None:
    values = {name: "v" for name in PROMPT_VARIABLES}
    try:
        check_template(template, PROMPT_VARIABLES)
    except TemplateError as exc:
        assert 0 <= exc.offset <= len(template)
    else:
        rendered = render_template(template, values)
        assert len(rendered) <= len(template) + 1  # "v" for each name: never longer than the template
    render_template(template, values)  # whatever the template, rendering returns text
