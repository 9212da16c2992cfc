"""Card macros ({{char}}, {{user}}, <BOT>...) to persona templates ({persona_name}, {user_name}...) and back.

Import: card text becomes a persona template. Literal braces are escaped ({ -> {{), macros map:

    {{char}} <BOT> <CHAR> {{bot}} {{charIfNotGroup}} {{group}}   -> {persona_name}  (the nickname when set)
    {{user}} <USER>                                                -> {user_name}     (the current speaker)
    {{date}} {{isodate}}, {{time}} {{isotime}}, {{weekday}}        -> {date}, {time}, {weekday}
    {{channel}} {{server}} {{bot_name}} {{persona_name}}...        -> the same variable (this bot's own)
    {{newline}} -> a line break; {{reverse:A}} -> A reversed
    {{// A}} {{comment: A}} {{hidden_key: A}} {{noop}} {{trim}}    -> nothing (not for the model)
    {{original}} -> the prompt a card's own text replaces (system prompt: the default; others: nothing)
    {{description}} {{personality}} {{scenario}}                  -> that card field's text
    anything else ({{random:...}}, {{roll:...}}, {{setvar::...}}) -> CardMacroError, or kept as literal
                                                                      text with keep_unknown

Export: a template's variables become macros ({persona_name} -> {{char}}, {user_name} -> {{user}},
others {{name}}), literal braces are unescaped. Matching is case-insensitive, as the specs ask.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.cards.errors import CardMacroError
from bot.domain.persona import PROMPT_VARIABLES

_MACRO = re.compile(r"\{\{(.*?)\}\}|<(user|bot|char)>", re.IGNORECASE | re.DOTALL)
ALIASES = {
    "char": "persona_name", "bot": "persona_name", "charifnotgroup": "persona_name", "group": "persona_name",
    "user": "user_name", "isodate": "date", "isotime": "time",
}
_DROPPED_PREFIXES = ("//", "comment:", "hidden_key:")
_DROPPED = frozenset({"noop", "trim"})
FIELD_MACROS = ("description", "personality", "scenario")
TO_CARD = {"persona_name": "{{char}}", "user_name": "{{user}}"}


def escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class MacroMap:
    """How one card's macros become template text."""

    keep_unknown: bool = False
    #: Raw card text of {{description}}, {{personality}} and {{scenario}}.
    fields: Mapping[str, str] = field(default_factory=dict)

    def template(self, text: str, where: str, *, original: str = "", inline: bool = True) -> str:
        """Card text -> persona template (see the module docstring). `original`: a template."""
        out: list[str] = []
        pos = 0
        for match in _MACRO.finditer(text):
            out.append(escape(text[pos : match.start()]))
            out.append(self._one(match, where, original, inline))
            pos = match.end()
        out.append(escape(text[pos:]))
        return "".join(out)

    def _one(self, match: re.Match[str], where: str, original: str, inline: bool) -> str:
        if match.group(2) is not None:  # <USER>, <BOT>, <CHAR>
            return "{" + ALIASES[match.group(2).lower()] + "}"
        body = match.group(1).strip()
        name = body.lower()
        if name in ALIASES:
            return "{" + ALIASES[name] + "}"
        if name in PROMPT_VARIABLES:
            return "{" + name + "}"
        if name == "newline":
            return "\n"
        if name in _DROPPED or name.startswith(_DROPPED_PREFIXES):
            return ""
        if name == "original":
            return original
        if name.startswith("reverse:"):
            return escape(body[len("reverse:") :][::-1])
        if name in FIELD_MACROS and inline:
            return MacroMap(self.keep_unknown).template(self.fields.get(name, ""), where, inline=False)
        if self.keep_unknown:
            return escape(match.group(0))
        raise CardMacroError(body, field=where)

    def literal(self, text: str, where: str, *, char: str, user: str = "User") -> str:
        """Card text -> plain text (example turns, lorebook keys): {{char}} and {{user}} become names."""
        template = self.template(text, where)
        names = {"persona_name": char, "user_name": user}
        out = []
        for literal, variable, _, _ in string.Formatter().parse(template):
            out.append(literal)
            if variable is not None:
                if variable not in names:
                    if not self.keep_unknown:
                        raise CardMacroError(variable, field=where)
                    out.append("{{" + variable + "}}")
                else:
                    out.append(names[variable])
        return "".join(out)


def to_card_text(template: str) -> str:
    """Persona template -> card text: variables become macros, escaped braces single ones."""
    out = []
    for literal, variable, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if variable is not None:
            out.append(TO_CARD.get(variable, "{{" + variable + "}}"))
    return "".join(out)
