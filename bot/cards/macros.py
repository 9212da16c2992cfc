"""Card macros ({{char}}, {{user}}, <BOT>...) to persona templates ({persona_name}, {user_name}...) and back.

Import: card text becomes a persona template. Literal braces are escaped ({ -> {{), and each macro
(SillyTavern's and RisuAI's; any case, nested ones too) is mapped, dropped with a note, or refused:

    {{char}} <BOT> <CHAR> {{bot}} {{charIfNotGroup}} {{group}}...  -> {persona_name}  (the nickname when set)
    {{user}} <USER> {{notChar}}                                    -> {user_name}     (the current speaker)
    {{date}} {{isodate}}, {{time}} {{isotime}} {{time_UTC+2}},
    {{weekday}}, {{datetimeformat ...}}                            -> {date}, {time}, {weekday}
    {{channel}} {{server}} {{bot_name}} {{persona_name}}...        -> the same variable (this bot's own)
    {{newline}} {{br}} -> a line break; {{space}} -> a space; {{reverse:A}} -> A reversed
    {{trim}} -> nothing, with the line breaks around it
    {{// A}} {{comment: A}} {{hidden_key: A}} {{noop}}             -> nothing (not for the model)
    {{original}} -> the prompt a card's own text replaces (system prompt: the default; others: nothing)
    {{description}} {{personality}} {{scenario}} (+ {{charDescription}}...), {{charVersion}} -> that text
    {{random::a::b}} {{random:a,b}} {{pick::a::b}}                 -> a (the first option; noted)
    {{roll:d20}}                                                   -> 1d20 (the formula; noted)
    chat state, prompt parts and variables ({{lastMessage}}, {{mesExamples}}, {{getvar::x}},
    {{setvar::x::1}}, {{persona}}, {{model}}...): this bot assembles prompts itself -> nothing (noted)
    anything else ({{#if}}, {{calc::...}}, unknown names)          -> CardMacroError listing them all,
                                                                      or literal text with keep_unknown

Export: a template's variables become macros ({persona_name} -> {{char}}, {user_name} -> {{user}},
others {{name}}), literal braces are unescaped.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bot.cards.errors import CardMacroError
from bot.domain.persona import PROMPT_VARIABLES

ALIASES = {
    "char": "persona_name", "bot": "persona_name", "charifnotgroup": "persona_name", "group": "persona_name",
    "groupnotmuted": "persona_name", "user": "user_name", "notchar": "user_name", "isodate": "date",
    "isotime": "time",
}
_LEGACY = re.compile(r"<(user|bot|char|charifnotgroup|group)>", re.IGNORECASE)
_TRIM = re.compile(r"(?:\r?\n)*\{\{\s*trim\s*\}\}(?:\r?\n)*", re.IGNORECASE)
_DROPPED_PREFIXES = ("//", "comment:", "hidden_key:")
_SILENT = frozenset({"noop", "blank", "none"})
FIELD_MACROS = {"description": "description", "personality": "personality", "scenario": "scenario",
                "chardescription": "description", "charpersonality": "personality", "charscenario": "scenario",
                "char_desc": "description", "char_persona": "description"}
#: What a chat app fills in from its chat or its own prompt settings: this bot builds those parts itself.
CHAT_STATE = frozenset({
    "lastmessage", "lastmessageid", "lastusermessage", "lastcharmessage", "firstincludedmessageid",
    "lastswipeid", "currentswipeid", "input", "idle_duration", "maxprompt", "model", "ismobile",
    "lastgenerationtype", "mesexamples", "mesexamplesraw", "charprompt", "charjailbreak", "charinstruction",
    "chardepthprompt", "systemprompt", "defaultsystemprompt", "exampleseparator", "chatseparator", "chatstart",
    "persona", "user_persona", "previous_char_chat", "previous_user_chat", "lastcharmessageid", "history",
    "lorebook", "chat_index", "message_index", "jb", "main_prompt", "global_note", "authors_note", "role",
    "slot", "wiBefore".lower(), "wiAfter".lower(), "loreBefore".lower(), "loreAfter".lower(), "anchorBefore".lower(),
    "anchorAfter".lower(), "instructsystem", "instructsystemprefix", "instructsystemsuffix", "instructinput",
    "instructoutput", "instructuserprefix", "instructusersuffix", "instructassistantprefix",
    "instructassistantsuffix", "instructfirstoutputprefix", "instructlastoutputprefix", "instructstop",
    "instructsysteminstructionprefix", "instructfirstinput", "instructlastinput", "instructseparator",
})
#: Macros with arguments (`name::a::b`, `name:a`, `name a`) that set or show chat state, variables or
#: media (SillyTavern variables, RisuAI assets): nothing in a prompt this bot builds.
STATE_FUNCTIONS = frozenset({
    "setvar", "getvar", "addvar", "incvar", "decvar", "var", "setglobalvar", "getglobalvar", "addglobalvar",
    "incglobalvar", "decglobalvar", "globalvar", "timediff", "banned", "settempvar", "gettempvar", "tempvar",
    "asset", "emotion", "img", "image", "raw", "inlay", "inlayed", "bg", "bgm", "audio", "video", "video-img",
    "source", "path", "button", "outlet",
})
_RANDOM = re.compile(r"^(random|pick)\s?(::?)(.*)$", re.IGNORECASE | re.DOTALL)
_ROLL = re.compile(r"^roll[\s:]+:?(.+)$", re.IGNORECASE | re.DOTALL)
_UTC = re.compile(r"^time_utc[-+]\d+$|^time::utc[-+]\d+$", re.IGNORECASE)
_FUNCTION = re.compile(r"^([a-z_][\w-]*)\s*(?:::|:|\s)", re.IGNORECASE)
_NEWLINES = re.compile(r"^(?:newline|br)(?:::(\d{1,2}))?$", re.IGNORECASE)
TO_CARD = {"persona_name": "{{char}}", "user_name": "{{user}}"}


def escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


_BRACES = re.compile(r"\{\{|\}\}")


def _macros(text: str) -> list[tuple[int, int]]:
    """(start, end) of each outermost {{...}} in `text`, nesting counted ({{random::{{user}}::b}} is one)."""
    if "{{" not in text:
        return []
    spans, depth, start = [], 0, 0
    for match in _BRACES.finditer(text):
        if match.group() == "{{":
            if depth == 0:
                start = match.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                spans.append((start, match.end()))
    return spans


def _split_top(body: str, sep: str) -> list[str]:
    """`body` split at `sep` outside nested {{...}}."""
    parts, depth, start = [], 0, 0
    for match in re.finditer(r"\{\{|\}\}|" + re.escape(sep), body):
        token = match.group()
        if token == "{{":
            depth += 1
        elif token == "}}":
            depth = max(depth - 1, 0)
        elif depth == 0:
            parts.append(body[start : match.start()])
            start = match.end()
    return [*parts, body[start:]]


@dataclass(frozen=True)
class MacroMap:
    """How one card's macros become template text. Collects what it dropped (`notes`) and what it
    could not map (`unknown`); `check()` raises for the latter."""

    keep_unknown: bool = False
    #: Raw card text of {{description}}, {{personality}} and {{scenario}}.
    fields: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    #: note -> the fields it applies to.
    notes: dict[str, list[str]] = field(default_factory=dict)
    #: (macro, field) of every macro with no mapping.
    unknown: list[tuple[str, str]] = field(default_factory=list)

    def template(self, text: str, where: str, *, original: str = "", inline: bool = True) -> str:
        """Card text -> persona template (see the module docstring). `original`: a template."""
        text = _TRIM.sub("", text)
        out: list[str] = []
        pos = 0
        for start, end in _macros(text):
            out.append(self._plain(text[pos:start]))
            out.append(self._one(text[start + 2 : end - 2], text[start:end], where, original, inline))
            pos = end
        out.append(self._plain(text[pos:]))
        return "".join(out)

    def _plain(self, text: str) -> str:
        """Text between macros: escaped, with the legacy <USER>/<BOT> tokens mapped."""
        out, pos = [], 0
        for match in _LEGACY.finditer(text):
            out += [escape(text[pos : match.start()]), "{" + ALIASES[match.group(1).lower()] + "}"]
            pos = match.end()
        return "".join([*out, escape(text[pos:])])

    def _note(self, what: str, where: str) -> None:
        fields = self.notes.setdefault(what, [])
        if where not in fields:
            fields.append(where)

    def _one(self, raw_body: str, whole: str, where: str, original: str, inline: bool) -> str:
        body = raw_body.strip()
        name = body.lower()
        if name in ALIASES:
            return "{" + ALIASES[name] + "}"
        if name in PROMPT_VARIABLES:
            return "{" + name + "}"
        if (newlines := _NEWLINES.match(body)) is not None:
            return "\n" * int(newlines.group(1) or 1)
        if name == "space":
            return " "
        if name in _SILENT or name.startswith(_DROPPED_PREFIXES):
            return ""
        if name == "original":
            return original
        if name.startswith("reverse:"):
            return escape(body[len("reverse:") :][::-1])
        if name in FIELD_MACROS and inline:
            return MacroMap(self.keep_unknown, notes=self.notes, unknown=self.unknown).template(
                self.fields.get(FIELD_MACROS[name], ""), where, inline=False)
        if name in ("charversion", "char_version"):
            return escape(self.version)
        if (random := _RANDOM.match(body)) is not None:
            return self._random(random, where, original, inline)
        if (roll := _ROLL.match(body)) is not None:
            formula = roll.group(1).strip()
            self._note("{{roll}} has no dice here: it is written as its formula (e.g. 1d20)", where)
            return escape(f"1d{formula}" if formula.isdecimal() else formula)
        if _UTC.match(body):
            self._note("{{time_UTC...}} is the bot's local {time} (no time zone offset)", where)
            return "{time}"
        if name.startswith("datetimeformat"):
            self._note("{{datetimeformat ...}} is {date} or {time} in the bot's own format", where)
            fmt = body[len("datetimeformat") :]
            return "{time}" if re.search(r"[Hhm]", fmt) and not re.search(r"[YD]", fmt) else "{date}"
        function = _FUNCTION.match(body)
        if name in CHAT_STATE or (function is not None and function.group(1).lower() in STATE_FUNCTIONS):
            self._note(f"{{{{{(function.group(1) if function else body)[:40]}}}}}: chat state, variables, media "
                       "or prompt parts a chat app fills in; left out (this bot builds its prompts itself)", where)
            return ""
        if not self.keep_unknown:
            self.unknown.append((body, where))
        return escape(whole)

    def _random(self, match: re.Match[str], where: str, original: str, inline: bool) -> str:
        kind, colons, rest = match.group(1).lower(), match.group(2), match.group(3)
        options = _split_top(rest, "::") if colons == "::" or "::" in rest else [
            o.strip() for o in _split_top(rest.replace("\\,", "\0"), ",")]
        chosen = options[0].replace("\0", ",") if options else ""
        self._note(f"{{{{{kind}}}}} has no random choice here: the first option is always used", where)
        return self.template(chosen, where, original=original, inline=inline)

    def check(self) -> None:
        """Raise CardMacroError naming every macro with no mapping (unless keep_unknown)."""
        if self.unknown:
            raise CardMacroError([m for m, _ in self.unknown], field=self.unknown[0][1],
                                 fields=sorted({w for _, w in self.unknown}))

    def warnings(self) -> list[str]:
        def fields(where: list[str]) -> str:
            return ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")

        return [f"{note} ({fields(where)})" for note, where in self.notes.items()]

    def literal(self, text: str, where: str, *, char: str, user: str = "User") -> str:
        """Card text -> plain text (example turns, lorebook keys): {{char}} and {{user}} become names;
        the other variables ({{date}}...) stay written as macros."""
        template = self.template(text, where)
        names = {"persona_name": char, "user_name": user}
        return _fill(template, lambda variable: names.get(variable, "{{" + variable + "}}"))


def _fill(template: str, value: Callable[[str], str]) -> str:
    out = []
    for literal, variable, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if variable is not None:
            out.append(value(variable))
    return "".join(out)


def to_card_text(template: str) -> str:
    """Persona template -> card text: variables become macros, escaped braces single ones."""
    return _fill(template, lambda variable: TO_CARD.get(variable, "{{" + variable + "}}"))
