"""A candidate: a proposed next version of a persona, as a change to its hard prompt, generation
or adapter, with provenance (which proposer, which data, which parent version, the diff).

A change is exactly what a persona variant can override, so a candidate goes live as a variant
without any translation, and `Candidate.persona(parent)` is the persona the variant serves.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.domain.persona import Example, Persona, Variant
from bot.errors import PersonaError


class Change(BaseModel):
    """What a candidate changes; unset fields keep the parent's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system_prompt: str | None = None
    examples: tuple[Example, ...] | None = None
    generation: dict[str, Any] = Field(default_factory=dict)
    adapter: str | None = None

    def overrides(self) -> dict[str, Any]:
        """The variant fields this change sets (for the persona file), in a stable order."""
        out: dict[str, Any] = {}
        if self.system_prompt is not None:
            out["system_prompt"] = self.system_prompt
        if self.examples is not None:
            out["examples"] = [e.model_dump() for e in self.examples]
        if self.generation:
            out["generation"] = dict(self.generation)
        if self.adapter is not None:
            out["adapter"] = self.adapter
        return out

    def is_empty(self) -> bool:
        return not self.overrides()


def candidate_id(parent: Persona, change: Change, proposer: str) -> str:
    digest = hashlib.sha256(
        json.dumps([parent.id, parent.version, proposer, change.overrides()], sort_keys=True).encode()
    ).hexdigest()
    return f"refine-{digest[:8]}"


@dataclass
class Candidate:
    id: str
    proposer: str
    parent_version: str
    change: Change
    #: Which data produced it: dataset fingerprint, reply ids used, counts.
    data: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @classmethod
    def create(cls, parent: Persona, change: Change, proposer: str, *, data: dict[str, Any] | None = None,
               notes: str = "") -> Candidate:
        """A validated candidate (raises PersonaError when the change makes an invalid persona)."""
        candidate = cls(candidate_id(parent, change, proposer), proposer, parent.version, change, data or {}, notes)
        candidate.persona(parent)
        return candidate

    def variant(self, weight: float) -> Variant:
        return Variant(id=self.id, weight=weight, **self.change.overrides())

    def persona(self, parent: Persona) -> Persona:
        """The parent as this candidate would serve it."""
        try:
            variant = self.variant(1.0)
            with_it = Persona.model_validate({**parent.model_dump(), "variants": [variant.model_dump()]})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PersonaError(f"candidate {self.id} ({self.proposer}) is not a valid persona: {where}: "
                               f"{first['msg']}") from None
        return with_it.with_variant(self.id).model_copy(update={"variants": ()})

    def diff(self, parent: Persona) -> str:
        """A unified diff of the changed fields, parent -> candidate (YAML, as in a persona file)."""
        after = self.persona(parent)
        fields = list(self.change.overrides())
        before_text = _yaml({f: _field(parent, f) for f in fields})
        after_text = _yaml({f: _field(after, f) for f in fields})
        return "".join(
            difflib.unified_diff(
                before_text.splitlines(keepends=True),
                after_text.splitlines(keepends=True),
                f"{parent.id} v{parent.version}",
                f"{parent.id} {self.id}",
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "proposer": self.proposer,
            "parent_version": self.parent_version,
            "change": self.change.model_dump(mode="json", exclude_defaults=True),
            "data": self.data,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(data["id"], data["proposer"], data["parent_version"], Change.model_validate(data["change"]),
                   dict(data.get("data", {})), data.get("notes", ""))


def _field(persona: Persona, name: str) -> Any:
    value = getattr(persona, name)
    if name == "examples":
        return [e.model_dump() for e in value]
    if name == "generation":
        return value.model_dump(mode="json")
    return value


class _Literal(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Literal.add_representer(str, _str_presenter)


def _yaml(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Literal, sort_keys=False, allow_unicode=True, width=100)
