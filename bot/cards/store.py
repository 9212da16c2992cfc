"""Writing an imported persona: YAML text, assets, and the files put in place atomically.

Order: every check that needs no disk first (the caller validated the persona); then the persona's
own lorebook file, when its book is too large for the persona file (`lorebooks/<id>.yaml`); then the
assets are written to a temporary folder and swapped into `assets/<id>/`; the persona text is validated by the
persona loader against its real path (so its avatar exists, lorebooks resolve...); only then the YAML
is written to a temporary file and renamed over the target. A failure at any step undoes the steps
before it: an import either writes everything or nothing. The running bot's hot reload sees one
complete new file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bot.cards.assets import AssetFile
from bot.cards.errors import CardConflict, CardFormatError
from bot.domain.lorebook import Lorebook
from bot.domain.persona import Persona
from bot.errors import PersonaFileError

_BaseDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when available: ~10x faster


class YamlDumper(_BaseDumper):
    """Multi-line text as literal blocks (readable prompts); everything else as usual."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


YamlDumper.add_representer(str, _text)


def persona_yaml(persona: Persona, header: str) -> str:
    data = persona.model_dump(mode="json", exclude_defaults=True)
    body = yaml.dump(data, Dumper=YamlDumper, sort_keys=False, allow_unicode=True, width=110)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file in the same folder, fsynced, renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _swapped_assets(personas_dir: Path, persona_id: str, files: list[AssetFile]) -> Iterator[None]:
    """Put the new assets/<id>/ in place; restore the old one if the block raises."""
    target = personas_dir / "assets" / persona_id
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{persona_id}.new-"))
    old: Path | None = None
    try:
        prefix = f"assets/{persona_id}/"
        for asset in files:
            relative = asset.path.removeprefix(prefix)
            dest = (staging / relative).resolve()
            if not dest.is_relative_to(staging.resolve()):  # the paths are built safe; this is the backstop
                raise CardFormatError(f"asset path {asset.path!r} leaves the assets folder")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(asset.data)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{persona_id}.old-"))
            os.replace(target, old / "previous")
        if files:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            os.replace(old / "previous", target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    try:
        yield
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if old is not None:
            os.replace(old / "previous", target)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def existing_source(personas_dir: Path, persona_id: str) -> Path | None:
    """The file that defines `persona_id` in `personas_dir`, if any (read without validating)."""
    from bot.personas.loader import persona_files

    if not personas_dir.is_dir():
        return None
    for path in persona_files(personas_dir):
        try:
            data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("id") == persona_id:
            return path
    return None


def book_header(persona_id: str, source: str) -> str:
    return (f"# The lorebook of persona {persona_id!r} (its card's character_book), imported from {source}.\n"
            "# Too large for the persona file, so it lives here (the persona lists it in `lorebooks:`).\n")


def _owned_book(data: bytes, persona_id: str) -> bool:
    return data.startswith(f"# The lorebook of persona {persona_id!r} ".encode())


@contextmanager
def _swapped_book(personas_dir: Path, persona_id: str, text: str | None, *, may_replace: bool) -> Iterator[None]:
    """Put the persona's own lorebook file (personas/lorebooks/<id>.yaml, for books too large to stay
    inline) in place, or remove the one an earlier import wrote when there is none now; undo it all
    if the block raises. A file there that an import did not write is never touched."""
    from bot.personas.lorebooks import lorebook_path

    path = lorebook_path(personas_dir, persona_id)
    try:
        old = path.read_bytes() if path.is_file() else None
    except OSError as exc:
        raise CardFormatError(f"cannot read {path}: {exc}") from exc
    if old is not None and not _owned_book(old, persona_id):
        if text is not None:
            raise CardConflict(f"{path} exists and is not this persona's card lorebook: choose another --id, or "
                               "rename that lorebook")
        old = None  # someone's shared lorebook with that name: not ours to remove
    elif old is not None and not may_replace:
        raise CardConflict(f"{path} exists already: import with --force to replace it")
    if text is None and old is None:
        yield
        return
    if text is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"))
    else:
        path.unlink()
    try:
        yield
    except BaseException:
        if old is not None:
            atomic_write(path, old)
        else:
            path.unlink(missing_ok=True)
        raise


def write_persona(
    personas_dir: Path, persona_id: str, text: str, files: list[AssetFile], *, force: bool, book: str | None = None
) -> Path:
    """Write an imported persona, its assets and (`book`, the YAML text) its own lorebook file (see the
    module docstring). Returns the persona file."""
    from bot.personas.loader import parse_persona

    target = personas_dir / f"{persona_id}.yaml"
    existing = existing_source(personas_dir, persona_id)
    if existing is not None and not force:
        raise CardConflict(f"persona {persona_id!r} exists ({existing}): import with --force to replace it, "
                           "or choose another --id")
    if existing is not None and existing != target:
        raise CardConflict(f"persona {persona_id!r} is defined in {existing}, not {target.name}: choose another --id")
    assets_dir = personas_dir / "assets" / persona_id
    if assets_dir.exists() and existing is None and not force:
        raise CardConflict(f"{assets_dir} exists already: import with --force to replace it")
    personas_dir.mkdir(parents=True, exist_ok=True)
    with _swapped_book(personas_dir, persona_id, book, may_replace=force or existing is not None), \
            _swapped_assets(personas_dir, persona_id, files):
        try:
            parse_persona(target, text)
        except PersonaFileError as exc:
            raise CardFormatError(f"the card does not make a valid persona: {exc}") from exc
        atomic_write(target, text.encode("utf-8"))
    return target


def fits_persona_file(persona: Persona, text: str | None = None) -> bool:
    """Whether `persona` (and `text`, its YAML, when given) is comfortably inside the persona-file limits."""
    from bot.personas.documents import DEFAULT_LIMITS as LIMITS

    if text is not None and len(text.encode("utf-8")) > LIMITS.max_bytes * 3 // 4:
        return False
    entries = len(persona.lorebook.entries) if persona.lorebook else 0
    if entries > LIMITS.max_items * 3 // 4:
        return False
    values, stack = 0, [persona.model_dump(mode="json", exclude_defaults=True)]
    while stack:
        item = stack.pop()
        values += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return values <= LIMITS.max_values * 3 // 4


def lorebook_yaml(book: Lorebook, header: str) -> str:
    body = yaml.dump(book.model_dump(mode="json", exclude_defaults=True), Dumper=YamlDumper, sort_keys=False,
                     allow_unicode=True, width=110)
    return header + body
