"""Read one YAML (or JSON) document from a file under personas/ with bounded work and exact errors.

Any bytes give either a `Document` (plain Python values plus where each came from) or a
`PersonaFileProblems` listing every problem as `file:line:column [field]: message`. Nothing else is
raised, and nothing runs long: the size is checked before reading, the encoding and forbidden
characters before parsing, and nesting depth, value counts (aliases expanded), key counts, string
and number lengths while the parser's events stream in, so a YAML bomb or 100k keys stop early.

    document = read_document(path, root=personas_dir)        # raises PersonaFileProblems
    document.data                                            # dict / list / str / int / ...
    document.locate(("examples", 2, "user"))                 # (line, column) for an error there

Persona files, eval suites and lorebooks all read through here (each may pass its own `Limits`).
Why not `yaml.safe_load`: its composer recurses once per nesting level (deep files overflow the
stack), it expands aliases without bound, raises non-YAML errors (int() of 5,000 digits, a control
character), keeps the last of duplicate keys silently, and points an unclosed quote at the file's end.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.errors import PersonaFileError, PersonaFileProblems

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: ~10x faster


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one file; the defaults fit persona files with plenty of room."""

    max_bytes: int = 512 * 1024
    max_depth: int = 24
    #: Values in the document with aliases expanded (what a validator would walk).
    max_values: int = 20_000
    max_keys: int = 500
    max_items: int = 2_000
    max_string: int = 100_000
    max_number_chars: int = 40
    #: Problems listed per file before the rest are summed up in one line.
    max_problems: int = 100


DEFAULT_LIMITS = Limits()

# What YAML forbids in a stream (PyYAML's NON_PRINTABLE): C0 controls but tab/LF/CR, DEL, C1 but NEL,
# surrogates, U+FFFE/U+FFFF.
_RAW_FORBIDDEN = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# What no text value may hold, even written as an escape ("\x01", "\ud800"): controls (but tab and
# newlines), surrogates (not encodable: they would fail at the first write to Redis or a terminal).
_VALUE_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")

_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))
_YAML_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_YAML_TAG}{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")}
_OPENERS = ("while scanning a quoted scalar", "while parsing a flow", "while scanning a simple key",
            "while scanning a block scalar", "while scanning an anchor", "while scanning a tag")


@dataclass(slots=True, eq=False)
class Node:
    """A value of the document and where it is (1-based line and column of its first character)."""

    kind: str  # "scalar" | "seq" | "map"
    line: int
    column: int
    value: Any = None  # scalar: the Python value; seq: [Node]; map: [(key Node, value Node)]
    #: Scalar style: None (plain), "'" / '"' (quoted), "|" / ">" (block: the text starts a line lower).
    style: str | None = None
    size: int = 1  # values below and including this one, aliases expanded

    def child(self, part: str | int) -> tuple[Node, Node] | None:
        """(key node or self, value node) of a mapping key or list index, if present."""
        if self.kind == "map":
            for key, value in self.value:
                if key.value == part:
                    return key, value
        elif self.kind == "seq" and isinstance(part, int) and 0 <= part < len(self.value):
            item = self.value[part]
            return item, item
        return None


@dataclass
class Document:
    path: Path
    text: str
    root: Node
    data: Any = field(default=None)
    #: Problems that did not stop parsing (a duplicate key, a control character in a value): the
    #: caller lists them with its own validation problems.
    problems: list[PersonaFileError] = field(default_factory=list)

    def node_at(self, loc: Sequence[str | int]) -> tuple[Node, Node | None]:
        """(nearest node on the way to `loc`, its key node when it is a mapping value)."""
        node, key = self.root, None
        for part in loc:
            found = node.child(part)
            if found is None:
                # Not in the file: a missing field (stay at its parent), or a name pydantic adds to a
                # location (a tagged union's tag): the parts after it may still be found.
                continue
            key, node = found
        return node, key

    def locate(self, loc: Sequence[str | int], *, at_key: bool = False) -> tuple[int, int]:
        """Line and column for a problem at `loc` (a pydantic error location): the value's own
        position, or its key's when `at_key` or when the value is a block (the key is what people
        read), or the nearest parent's when `loc` does not exist (a missing field)."""
        node, key = self.node_at(loc)
        if key is not None and (at_key or node.kind != "scalar" or node.style in ("|", ">")):
            return key.line, key.column
        return node.line, node.column

    def text_position(self, loc: Sequence[str | int], offset: int) -> tuple[int, int]:
        """Line and column of character `offset` inside the text value at `loc` (exact for plain and
        block scalars without escapes, the value's line otherwise)."""
        node, _ = self.node_at(loc)
        if node.kind != "scalar" or not isinstance(node.value, str):
            return node.line, node.column
        before = node.value[:offset]
        lines = before.count("\n")
        if node.style in ("|", ">"):
            indent = self._block_indent(node)
            return node.line + 1 + lines, indent + len(before) - (before.rfind("\n") + 1) + 1
        if lines == 0 and node.style is None:
            return node.line, node.column + offset
        if node.style is None:
            return node.line + lines, 1
        return node.line, node.column  # quoted: escapes and folding make columns guesswork

    def _block_indent(self, node: Node) -> int:
        lines = self.text.splitlines()
        for raw in lines[node.line : node.line + 50]:  # the first non-empty line of the block
            if raw.strip():
                return len(raw) - len(raw.lstrip(" "))
        return 0


class _Problems:
    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.limits = limits
        self.found: list[PersonaFileError] = []
        self.dropped = 0

    def add(self, message: str, line: int | None = None, column: int | None = None, field: str | None = None) -> None:
        if len(self.found) >= self.limits.max_problems:
            self.dropped += 1
            return
        self.found.append(PersonaFileError(self.path, message, field=field, line=line, column=column))

    def raise_if_any(self) -> None:
        if not self.found:
            return
        if self.dropped:
            self.add_summary()
        raise PersonaFileProblems(self.found)

    def add_summary(self) -> None:
        self.found.append(PersonaFileError(self.path, f"{self.dropped} more problem(s) of the same kinds not listed"))


class _Stop(Exception):
    """A limit was passed: stop parsing (the problem is already recorded)."""


def file_problem(path: Path, message: str, **where: Any) -> PersonaFileProblems:
    return PersonaFileProblems([PersonaFileError(path, message, **where)])


# -- reading bytes ----------------------------------------------------------------------------------


def resolve_inside(path: Path, root: Path) -> Path:
    """The real file behind `path`, which must be a regular file inside `root` (symlinks followed).

    Raises PersonaFileProblems: a dangling link, a link out of `root`, a directory, a FIFO or device.
    """
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise file_problem(path, "broken symlink: its target does not exist") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop is a RuntimeError before 3.13
        raise file_problem(path, f"cannot resolve: {_reason(exc)}") from None
    real_root = root.resolve()
    if real != real_root and real_root not in real.parents:
        raise file_problem(path, f"links to {real}, outside {root}: only files inside it are read")
    try:
        mode = real.stat().st_mode
    except OSError as exc:
        raise file_problem(path, f"cannot read: {_reason(exc)}") from None
    if not stat.S_ISREG(mode):
        raise file_problem(path, f"not a regular file ({_kind(mode)})")
    return real


def read_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; refuses special files and files over `max_bytes` before reading them."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the loader
    except OSError as exc:
        raise file_problem(path, f"cannot read: {_reason(exc)}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise file_problem(path, f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise file_problem(path, f"file too large: {info.st_size:,} bytes (the limit is {max_bytes:,})")
        try:
            data = file.read(max_bytes + 1)
        except OSError as exc:
            raise file_problem(path, f"cannot read: {_reason(exc)}") from None
    if len(data) > max_bytes:  # it grew while we looked
        raise file_problem(path, f"file too large: over {max_bytes:,} bytes")
    return data


def decode(path: Path, data: bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    """UTF-8 text (a UTF-8 BOM is dropped); every undecodable spot and forbidden character named
    by line and column."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise file_problem(path, f"the file is {name}; save it as UTF-8", line=1, column=1)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    problems = _Problems(path, limits)
    text = _decode_utf8(data, problems)
    for match in _RAW_FORBIDDEN.finditer(text):
        line, column = _line_column(text, match.start())
        problems.add(f"character U+{ord(match.group()):04X} is not allowed here (control characters and "
                     "invalid code points cannot be in a persona file)", line, column)
        if problems.dropped:
            break
    problems.raise_if_any()
    return text


def _decode_utf8(data: bytes, problems: _Problems) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # One problem per line with bad bytes, at the first bad byte of that line.
    last_line = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if number != last_line:
                column = len(raw[: exc.start].decode("utf-8", errors="replace")) + 1
                problems.add(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8", number, column)
                last_line = number
            if problems.dropped:
                break
    problems.raise_if_any()
    return data.decode("utf-8", errors="replace")  # pragma: no cover - a line always fails above


# -- parsing ----------------------------------------------------------------------------------------


def read_document(path: Path, *, root: Path | None = None, limits: Limits = DEFAULT_LIMITS) -> Document:
    """Read and parse one file (following a symlink only to a regular file inside `root`)."""
    real = resolve_inside(path, root) if root is not None else path
    return parse_document(path, decode(path, read_bytes(real, limits.max_bytes), limits), limits)


def parse_document(path: Path, text: str, limits: Limits = DEFAULT_LIMITS) -> Document:
    """Parse YAML text (JSON is YAML) into a Document; raises PersonaFileProblems."""
    if len(text) > limits.max_bytes:
        raise file_problem(path, f"too large: {len(text):,} characters (the limit is {limits.max_bytes:,})")
    problems, soft = _Problems(path, limits), _Problems(path, limits)
    composer = _Composer(path, text, limits, problems, soft)
    try:
        root = composer.compose()
    except _Stop:
        root = None
    except yaml.MarkedYAMLError as exc:
        problems.add(*_yaml_error(exc, composer.last_multiline_quote))
        root = None
    except yaml.YAMLError as exc:  # a reader error without marks
        problems.add(f"invalid YAML: {exc}", 1, 1)
        root = None
    except (RecursionError, MemoryError):  # pragma: no cover - depth is bounded before this
        problems.add("invalid YAML: too deeply nested", 1, 1)
        root = None
    if problems.found:
        problems.found = sorted(soft.found + problems.found, key=lambda e: (e.line or 0, e.column or 0))
        problems.raise_if_any()
    assert root is not None
    document = Document(path, text, root, problems=soft.found)
    document.data = _values(root)
    return document


def _yaml_error(exc: yaml.MarkedYAMLError, open_quote: Node | None) -> tuple[str, int, int]:
    """(message, line, column) where the problem starts: where an unclosed quote or bracket opens,
    else where the parser stopped."""
    problem, context = exc.problem or "syntax error", exc.context or ""
    mark, other = exc.problem_mark, exc.context_mark
    if context.startswith(_OPENERS) and exc.context_mark is not None:
        mark, other = exc.context_mark, exc.problem_mark
    if mark is None:
        return f"invalid YAML: {problem}", 1, 1
    if context.startswith("while scanning a quoted scalar") and "end of stream" in problem:
        return "invalid YAML: this quote is never closed", mark.line + 1, mark.column + 1
    message = f"invalid YAML: {context + ': ' if context else ''}{problem}"
    if other is not None and other.line != mark.line:
        message += f" (see line {other.line + 1})"
    if open_quote is not None and open_quote.line < mark.line + 1:
        where = f"{open_quote.line}:{open_quote.column}"
        message += f"; the quoted value from line {where} spans several lines: unclosed quote?"
    return message, mark.line + 1, mark.column + 1


class _Composer:
    """Events to Nodes, iteratively, with every limit checked as the events arrive."""

    def __init__(self, path: Path, text: str, limits: Limits, problems: _Problems, soft: _Problems) -> None:
        self.path = path
        self.text = text
        self.limits = limits
        self.problems = problems
        self.soft = soft
        self.segments: list[str | int] = []  # where the open collections are: keys and indexes
        self.anchors: dict[str, Node] = {}
        self.values = 0
        self.last_multiline_quote: Node | None = None

    def fail(self, message: str, mark: Any) -> None:
        self.problems.add(message, mark.line + 1, mark.column + 1)

    def stop(self, message: str, mark: Any) -> _Stop:
        self.fail(message, mark)
        return _Stop()

    def compose(self) -> Node:
        root: Node | None = None
        stack: list[tuple[Node, str | None]] = []  # open collections and their anchors
        keys: list[Node | None] = []  # per open collection: a mapping's key still awaiting its value
        for event in _events(self.text):
            if isinstance(event, yaml.DocumentStartEvent) and root is not None:
                raise self.stop("one document per file: remove the `---` and what follows", event.start_mark)
            if isinstance(event, yaml.StreamStartEvent | yaml.StreamEndEvent | yaml.DocumentStartEvent
                          | yaml.DocumentEndEvent):
                continue
            mark = event.start_mark
            if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                node, anchor = stack.pop()
                keys.pop()
                if stack:
                    self.segments.pop()
                node.size = 1 + sum(
                    (k.size + v.size for k, v in node.value) if node.kind == "map" else (v.size for v in node.value)
                )
                if anchor:
                    self.anchors[anchor] = node  # only once complete: `&a [*a]` cannot loop
                continue
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                kind = "map" if isinstance(event, yaml.MappingStartEvent) else "seq"
                self._check_tag(event)
                if len(stack) >= self.limits.max_depth:
                    raise self.stop(f"nested more than {self.limits.max_depth} levels deep", mark)
                node = Node(kind, mark.line + 1, mark.column + 1, [])
                self._count(1, mark)
                if stack:
                    segment = self._attach(stack[-1][0], keys, node, mark, None)
                    self.segments.append("" if segment is None else segment)  # None: never (a key raises)
                root = root or node
                stack.append((node, event.anchor))
                keys.append(None)
                continue
            if isinstance(event, yaml.AliasEvent):
                target = self.anchors.get(event.anchor or "")
                if target is None:
                    raise self.stop(f"unknown alias *{event.anchor} (define &{event.anchor} before)", mark)
                self._count(target.size, mark)
                node, text = target, None if target.kind != "scalar" else str(target.value)
            else:  # ScalarEvent
                node, text = self._scalar(event), event.value
                self._count(1, mark)
                if event.anchor:
                    self.anchors[event.anchor] = node
            if stack:
                segment = self._attach(stack[-1][0], keys, node, mark, text)
                self._check_text(text if segment is None else node.value, segment, mark)
            else:
                root = node
        return root if root is not None else Node("scalar", 1, 1, None)

    def _attach(
        self, parent: Node, keys: list[Node | None], node: Node, mark: Any, key_text: str | None
    ) -> str | int | None:
        """Add `node` to the open collection `parent` (as a list item, a key, or a key's value);
        returns where it went (its index or key), None when it is a key."""
        if parent.kind == "seq":
            if len(parent.value) >= self.limits.max_items:
                raise self.stop(f"more than {self.limits.max_items:,} items in one list", mark)
            parent.value.append(node)
            return len(parent.value) - 1
        key = keys[-1]
        if key is None:
            if key_text is None:
                raise self.stop("a key must be plain text, not a list or mapping", mark)
            # Keys are the text as written: `on:` stays "on", `1:` stays "1" (field names are text).
            keys[-1] = Node("scalar", mark.line + 1, mark.column + 1, key_text)
            return None
        if len(parent.value) >= self.limits.max_keys:
            raise self.stop(f"more than {self.limits.max_keys:,} keys in one mapping", mark)
        for other, _ in parent.value:
            if other.value == key.value:
                self.soft.add(f"duplicate key {key.value!r} (first at line {other.line}; only one is used)",
                              key.line, key.column, self._field(key.value))
                break
        parent.value.append((key, node))
        keys[-1] = None
        return str(key.value)

    def _field(self, last: str | int | None) -> str:
        return ".".join(str(s) for s in (*self.segments, *(() if last is None else (last,))))

    def _check_text(self, value: object, segment: str | int | None, mark: Any) -> None:
        if isinstance(value, str) and (bad := _VALUE_FORBIDDEN.search(value)) is not None:
            self.soft.add(f"character U+{ord(bad.group()):04X} is not allowed in text (control characters and "
                          "lone surrogates)", mark.line + 1, mark.column + 1, self._field(segment) or None)

    def _count(self, values: int, mark: Any) -> None:
        self.values += values
        if self.values > self.limits.max_values:
            raise self.stop(f"more than {self.limits.max_values:,} values (aliases expanded): too large", mark)

    def _check_tag(self, event: Any) -> None:
        tag = event.tag
        if tag and tag not in (f"{_YAML_TAG}map", f"{_YAML_TAG}seq", "!"):
            raise self.stop(f"unsupported tag {tag} (plain lists and mappings only)", event.start_mark)

    def _scalar(self, event: Any) -> Node:
        mark, text, style = event.start_mark, event.value, event.style or None
        node = Node("scalar", mark.line + 1, mark.column + 1, text, style)
        if style in ("'", '"') and event.end_mark.line != mark.line:
            self.last_multiline_quote = node
        if len(text) > self.limits.max_string:
            raise self.stop(f"text of {len(text):,} characters (the limit is {self.limits.max_string:,})", mark)
        tag = event.tag
        if tag in (None, "!") or (tag == f"{_YAML_TAG}str"):
            # A plain scalar may be null, a bool, a number or text; anything quoted is text.
            tag = _resolve(text) if tag is None and event.implicit[0] else f"{_YAML_TAG}str"
        if tag not in _SCALAR_TAGS:
            raise self.stop(f"unsupported tag {tag} (plain text, numbers, true/false and null only)", mark)
        node.value = self._construct(tag, text, node, mark)
        return node

    def _construct(self, tag: str, text: str, node: Node, mark: Any) -> Any:
        kind = tag.removeprefix(_YAML_TAG)
        if kind in ("str", "timestamp"):
            return text  # dates stay text: persona fields are labels, not datetimes
        if kind in ("int", "float") and len(text) > self.limits.max_number_chars:
            raise self.stop(f"number of {len(text):,} characters (the limit is {self.limits.max_number_chars})", mark)
        scalar = yaml.ScalarNode(tag, text, mark, mark)
        try:
            return _CONSTRUCTORS[kind](_CONSTRUCTOR, scalar)
        except (ValueError, TypeError, OverflowError, yaml.YAMLError):
            raise self.stop(f"cannot read {text!r} as {kind}", mark) from None


_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_CONSTRUCTORS: dict[str, Any] = {
    "int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "float": yaml.constructor.SafeConstructor.construct_yaml_float,
    "bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
    "null": yaml.constructor.SafeConstructor.construct_yaml_null,
}


def _resolve(text: str) -> str:
    return str(_RESOLVER.resolve(yaml.ScalarNode, text, (True, False)))


def _events(text: str) -> Iterator[Any]:
    loader = _Loader(text)
    try:
        while loader.check_event():
            yield loader.get_event()
    finally:
        loader.dispose()


def _values(node: Node) -> Any:
    """Plain Python values (depth is bounded by the composer, so recursion is safe)."""
    if node.kind == "scalar":
        return node.value
    if node.kind == "seq":
        return [_values(item) for item in node.value]
    return {key.value: _values(value) for key, value in node.value}


def _line_column(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"
