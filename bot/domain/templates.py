"""Prompt templates are data, not code: text with bare `{name}` placeholders, nothing more.

    parse_template("Hi {user_name}! {{literal}}")   # -> ("Hi ", Var("user_name"), "! {literal}")
    render_template(parts, {"user_name": "Sam"})    # -> "Hi Sam! {literal}"

A placeholder is `{` + a known variable name + `}`; `{{` and `}}` are literal braces. Everything
`str.format` would also accept — format specs (`{date:%Y}`, `{x:>300000000}`), conversions
(`{x!r}`), attribute and index access (`{x.y}`, `{x[0]}`), nested fields, positional `{}` — is
refused with a `TemplateError` at the character where it starts, so it is caught when the persona
loads. Rendering cannot fail: every variable has a value, and its length is what the value's is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPECIAL = re.compile(r"[{}]")


@dataclass(frozen=True, slots=True)
class Var:
    name: str


Part = str | Var


class TemplateError(ValueError):
    """A template problem at character `offset` of the template text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def _placeholder_error(template: str, start: int, end: int) -> TemplateError:
    """Why `{...}` at template[start:end] is not a bare placeholder."""
    body = template[start + 1 : end]
    shown = template[start : end + 1]
    hint = "write {{ and }} for literal braces"
    if not body:
        return TemplateError(f"empty placeholder {{}}: name a variable, or {hint}", start)
    name = _NAME.match(body)
    if name is None:
        return TemplateError(f"{shown!r} is not a placeholder: a variable name is letters, digits and _; {hint}",
                             start)
    rest = body[name.end() :]
    if rest[0] == ":":
        why = "format specs (`:...`)"
    elif rest[0] == "!":
        why = "conversions (`!r`, `!s`)"
    elif rest[0] in ".[":
        why = "attribute and index access"
    else:
        why = "anything but the name"
    return TemplateError(f"{shown!r}: {why} are not supported in templates; write {{{name.group()}}}", start)


@functools.lru_cache(maxsize=512)
def parse_template(template: str) -> tuple[Part, ...]:
    """The template's literal text and placeholders, or TemplateError (unknown names are the
    caller's to check: see `check_template`)."""
    parts: list[Part] = []
    text: list[str] = []
    i, n = 0, len(template)
    while i < n:
        match = _SPECIAL.search(template, i)
        if match is None:
            text.append(template[i:])
            break
        j = match.start()
        text.append(template[i:j])
        char = template[j]
        if template.startswith(char * 2, j):  # {{ or }}: a literal brace
            text.append(char)
            i = j + 2
            continue
        if char == "}":
            raise TemplateError("single '}': write }} for a literal brace", j)
        close = template.find("}", j + 1)
        inner_open = template.find("{", j + 1)
        if close == -1:
            raise TemplateError("'{' is never closed: write {{ for a literal brace", j)
        if inner_open != -1 and inner_open < close:
            raise TemplateError(f"nested placeholder in {template[j : close + 1]!r}: placeholders hold a name only", j)
        body = template[j + 1 : close]
        if _NAME.fullmatch(body) is None:
            raise _placeholder_error(template, j, close)
        if text:
            parts.append("".join(text))
            text = []
        parts.append(Var(body))
        i = close + 1
    if text and "".join(text):
        parts.append("".join(text))
    return tuple(parts)


def check_template(template: str, known: Collection[str]) -> tuple[Part, ...]:
    """parse_template, plus: every name is one of `known` (TemplateError at the first unknown one)."""
    parts = parse_template(template)
    unknown = [p.name for p in parts if isinstance(p, Var) and p.name not in known]
    if unknown:
        first = unknown[0]
        offset = _offset_of(template, first)
        names = ", ".join("{" + u + "}" for u in dict.fromkeys(unknown))
        raise TemplateError(f"unknown variable(s) {names}; known: {', '.join(sorted(known))}", offset)
    return parts


def _offset_of(template: str, name: str) -> int:
    for match in re.finditer(r"\{" + re.escape(name) + r"\}", template):
        # Skip an escaped `{{name}}`: count the braces before it.
        before = len(template[: match.start()]) - len(template[: match.start()].rstrip("{"))
        if before % 2 == 0:
            return match.start()
    return 0


def template_names(template: str) -> set[str]:
    """The variable names a valid template uses (raises TemplateError for an invalid one)."""
    return {p.name for p in parse_template(template) if isinstance(p, Var)}


def render_template(template: str, values: Mapping[str, str]) -> str:
    """The template with its placeholders filled. Never raises: a template that does not parse (it
    skipped validation) is returned as written, and a name without a value stays `{name}`."""
    try:
        parts = parse_template(template)
    except TemplateError:
        return template
    return "".join(p if isinstance(p, str) else str(values.get(p.name, "{" + p.name + "}")) for p in parts)
