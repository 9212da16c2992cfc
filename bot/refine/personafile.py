"""Editing a persona file in place: add a canary variant, remove it, or promote it to the next version.

ruamel.yaml's round trip keeps comments, key order, quoting and block layout, so the change is a
small, reviewable diff in git. Every edit is validated with the persona loader before anything is
written (an edit that would break the persona raises PersonaFileError and writes nothing), and
written atomically: a temporary file in the same directory (a dot-file the loader never reads),
fsync, then rename over the original. If the file changed since it was read, nothing is written
(PersonaFileChanged). A running bot picks the new file up through the registry's hot reload.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import LiteralScalarString

from bot.domain.persona import Persona
from bot.errors import PersonaFileError
from bot.personas.loader import parse_persona
from bot.refine.candidates import Candidate
from bot.refine.errors import ExperimentError, PersonaFileChanged

CONTROL = "control"
_INDENTED_SEQUENCE = re.compile(r"^[A-Za-z_][\w-]*:[ \t]*\n(?:[ \t]*#.*\n)*  - ", re.MULTILINE)


def _yaml(text: str) -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    # Keep the file's own list style: "key:\n  - item" (indented) or "key:\n- item".
    if _INDENTED_SEQUENCE.search(text) or "- " not in text:
        yaml.indent(mapping=2, sequence=4, offset=2)
    else:
        yaml.indent(mapping=2, sequence=2, offset=0)
    return yaml


@dataclass
class PersonaDocument:
    """One persona file read for editing: its text (to detect concurrent edits) and round-trip data."""

    path: Path
    text: str
    data: CommentedMap

    @classmethod
    def read(cls, path: Path) -> PersonaDocument:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PersonaFileError(path, f"cannot read: {exc}") from exc
        data = _yaml(text).load(text)
        if not isinstance(data, CommentedMap):
            raise PersonaFileError(path, "a persona file must be a mapping of fields", line=1)
        return cls(path, text, data)

    def render(self) -> str:
        out = io.StringIO()
        _yaml(self.text).dump(self.data, out)
        return out.getvalue()

    def write(self) -> Persona:
        """Validate and atomically replace the file; returns the persona as it now loads."""
        new_text = self.render()
        persona = parse_persona(self.path, new_text)  # raises PersonaFileError: nothing written
        try:
            current = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PersonaFileError(self.path, f"cannot read: {exc}") from exc
        if current != self.text:
            raise PersonaFileChanged(self.path)
        atomic_write(self.path, new_text)
        self.text = new_text
        return persona

    # -- variants -----------------------------------------------------------------------------

    def variants(self) -> CommentedSeq:
        found = self.data.get("variants")
        return found if isinstance(found, CommentedSeq) else CommentedSeq()

    def variant_index(self, variant_id: str) -> int | None:
        return next((n for n, v in enumerate(self.variants()) if isinstance(v, dict) and v.get("id") == variant_id),
                    None)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.refine.tmp")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _text(value: str) -> str | LiteralScalarString:
    return LiteralScalarString(value if value.endswith("\n") else value + "\n") if "\n" in value else value


def _plain(value: Any) -> Any:
    """Overrides as ruamel nodes: multi-line text as `|` blocks, nested mappings and lists."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        out = CommentedMap()
        for k, v in value.items():
            out[k] = _plain(v)
        return out
    if isinstance(value, list | tuple):
        seq = CommentedSeq()
        seq.extend(_plain(v) for v in value)
        return seq
    return value


def _weight(item: Any) -> float:
    return float(item.get("weight", 1.0)) if isinstance(item, dict) else 0.0


def add_canary(path: Path, candidate: Candidate, fraction: float, *, note: str) -> tuple[Persona, bool]:
    """Add `candidate` as a variant serving `fraction` of conversations. Returns (the persona as it
    now loads, whether a `control` variant had to be added for the rest of the traffic)."""
    if not 0.0 < fraction < 1.0:
        raise ExperimentError("the canary's share of traffic must be between 0 and 1")
    doc = PersonaDocument.read(path)
    version = str(doc.data.get("version", "1"))
    if version != candidate.parent_version:
        raise ExperimentError(f"{path} is version {version}; candidate {candidate.id} was made for "
                              f"{candidate.parent_version} (build the dataset and propose again)")
    if doc.variant_index(candidate.id) is not None:
        raise ExperimentError(f"{path} already has a variant {candidate.id}")
    variants = doc.variants()
    active = sum(_weight(v) for v in variants)
    added_control = active <= 0
    if added_control:
        if doc.variant_index(CONTROL) is not None:
            raise ExperimentError(f"{path} has a switched-off variant named {CONTROL!r}; rename or remove it")
        # Switched-off variants (weight 0) stay as they are; `control` serves the rest of the traffic.
        variants.append(CommentedMap([("id", CONTROL), ("weight", round(100 * (1 - fraction), 4))]))
        canary_weight = round(100 * fraction, 4)
    else:
        canary_weight = round(active * fraction / (1 - fraction), 4)
    canary = CommentedMap([("id", candidate.id), ("weight", canary_weight)])
    for key, value in candidate.change.overrides().items():
        canary[key] = _plain(value)
    variants.append(canary)
    if not isinstance(doc.data.get("variants"), CommentedSeq):
        doc.data["variants"] = variants
    variants.yaml_set_comment_before_after_key(len(variants) - 1, before=note, indent=_item_indent(doc))
    return doc.write(), added_control


def _item_indent(doc: PersonaDocument) -> int:
    return 2 if _INDENTED_SEQUENCE.search(doc.text) or "- " not in doc.text else 0


def _drop_experiment(doc: PersonaDocument, canary_id: str, added_control: bool) -> CommentedMap:
    index = doc.variant_index(canary_id)
    if index is None:
        raise ExperimentError(f"{doc.path} has no variant {canary_id} any more (edited by hand?)")
    variants = doc.variants()
    canary = variants.pop(index)
    if added_control:
        control = doc.variant_index(CONTROL)
        if control is not None and set(variants[control]) <= {"id", "weight"}:
            variants.pop(control)
    if not variants:
        del doc.data["variants"]
    return canary


def remove_canary(path: Path, canary_id: str, added_control: bool) -> Persona:
    """Take the canary out (and the `control` variant refine added); the persona is as before."""
    doc = PersonaDocument.read(path)
    _drop_experiment(doc, canary_id, added_control)
    return doc.write()


def next_version(version: str) -> str:
    """1.0 -> 1.1, 2 -> 3, 1.9 -> 1.10, beta -> beta.1 (the last number goes up)."""
    match = re.search(r"(\d+)(?!.*\d)", version)
    if match is None:
        return f"{version}.1"
    start, end = match.span()
    return f"{version[:start]}{int(match.group(1)) + 1}{version[end:]}"


def promote_canary(path: Path, canary_id: str, added_control: bool, *, note: str) -> tuple[Persona, str]:
    """Fold the canary's overrides into the persona as its next version; returns (persona, old text)."""
    doc = PersonaDocument.read(path)
    old_text = doc.text
    canary = _drop_experiment(doc, canary_id, added_control)
    data = doc.data
    for key in ("system_prompt", "examples", "adapter"):
        if key in canary:
            data[key] = canary[key]
    if canary.get("generation"):
        generation = data.get("generation")
        if not isinstance(generation, CommentedMap):
            generation = CommentedMap()
            data["generation"] = generation
        for key, value in canary["generation"].items():
            generation[key] = value
    old_version = str(data.get("version", "1"))
    new = next_version(old_version)
    data["version"] = type(data["version"])(new) if "version" in data and isinstance(data["version"], str) else new
    data.yaml_set_comment_before_after_key("version", before=note, indent=0)
    return doc.write(), old_text
