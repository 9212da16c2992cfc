"""Read a card file (JSON, PNG or CHARX) into its JSON object, within the limits.

The format is told by the bytes, not the file name: a PNG signature, a zip signature (also after a
JPEG image: RisuAI's "CHARX in JPEG"), a JSON object; other images get an error that says what to do.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.cards import png
from bot.cards.charx import CharxArchive, has_zip, is_zip
from bot.cards.errors import CardError, CardFormatError, CardLimitError
from bot.cards.limits import MAX_FILE_BYTES, MAX_JSON_BYTES, MAX_JSON_DEPTH, MAX_JSON_NODES


@dataclass
class CardFile:
    """A card's JSON object and where its embedded assets can be read from."""

    card: dict[str, Any]
    kind: str  # "json", "png" or "charx"
    #: PNG cards: the image without its card chunks (the default icon).
    image: bytes | None = None
    #: PNG cards: `chara-ext-asset_:PATH` chunks (base64), reachable as `__asset:PATH`.
    png_assets: dict[str, bytes] = field(default_factory=dict)
    charx: CharxArchive | None = None
    #: Strings whose control characters or lone surrogates were taken out (clean_strings).
    cleaned: int = 0

    def __post_init__(self) -> None:
        self.card, self.cleaned = clean_strings(self.card)


def check_shape(value: Any, what: str = "card") -> None:
    """Nesting depth and node count of parsed JSON, walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_JSON_NODES:
            raise CardLimitError(f"{what} JSON has more than {MAX_JSON_NODES} values")
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise CardLimitError(f"{what} JSON nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def decode_json(raw: bytes, what: str = "card") -> dict[str, Any]:
    if len(raw) > MAX_JSON_BYTES:
        raise CardLimitError(f"{what} JSON is {len(raw)} bytes (limit {MAX_JSON_BYTES})")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CardFormatError(f"{what} JSON is not UTF-8 text: {exc}") from exc
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise CardLimitError(f"{what} JSON nested deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError as exc:  # JSONDecodeError, and numbers too long to convert
        raise CardFormatError(f"malformed {what} JSON: {exc}") from exc
    check_shape(value, what)
    if not isinstance(value, dict):
        raise CardFormatError(f"{what} JSON must be an object, not {type(value).__name__}")
    return value


def b64decode(text: bytes | str, what: str, limit: int) -> bytes:
    """Strict base64 (whitespace allowed, nothing else), refused before decoding when too large."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = b"".join(raw.split())
    if len(raw) // 4 * 3 > limit:
        raise CardLimitError(f"{what} is over {limit} bytes")
    padded = raw.rstrip(b"=") + b"=" * (-len(raw.rstrip(b"=")) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        if re.fullmatch(rb"[A-Za-z0-9_-]*=*", raw):  # the URL-safe alphabet, which some web tools write
            try:
                return base64.urlsafe_b64decode(padded)
            except (binascii.Error, ValueError):
                pass
        raise CardFormatError(f"{what} is not valid base64: {exc}") from exc


#: Images that are not PNG: (magic test, name). A JPEG may carry a CHARX zip after its image (RisuAI).
_IMAGES: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (lambda d: d.startswith(b"\xff\xd8\xff"), "JPEG"),
    (lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", "WebP"),
    (lambda d: d.startswith((b"GIF87a", b"GIF89a")), "GIF"),
    (lambda d: d[4:12] in (b"ftypavif", b"ftypavis"), "AVIF"),
    (lambda d: d.startswith(b"BM"), "BMP"),
)
#: Control characters (but tab and line breaks) and non-characters: never in a card's text on purpose
#: (copy-paste debris), and not allowed in a persona file. Lone surrogates become U+FFFD.
_DEBRIS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_strings(value: Any) -> tuple[Any, int]:
    """`value` (parsed JSON) with control characters taken out of every string and lone surrogates
    replaced; and how many strings changed. Walked without recursion."""
    changed = 0

    def clean(text: str) -> str:
        nonlocal changed
        new = _SURROGATE.sub("\ufffd", _DEBRIS.sub("", text))
        changed += new != text
        return new

    if isinstance(value, str):
        return clean(value), changed
    root: list[Any] = [value]
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        pairs = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
        for key, child in pairs:
            if isinstance(child, str):
                child = clean(child)
            elif isinstance(child, dict | list):
                stack.append(child)
            if isinstance(item, dict) and isinstance(key, str) and (new_key := clean(key)) != key:
                del item[key]
                item[new_key] = child
            else:
                item[key] = child
    return root[0], changed


def _not_a_card(data: bytes) -> CardFormatError:
    for test, name in _IMAGES:
        if test(data):
            return CardFormatError(
                f"a {name} image: this bot reads character cards from PNG files (the card in their `chara`/`ccv3` "
                "chunk), JSON files and CHARX files. Export the character from your app as a PNG or JSON card")
    if not data.strip():
        return CardFormatError("the file is empty")
    return CardFormatError("not a character card: not a PNG, a CHARX (zip) or a JSON file")


def parse_card_bytes(data: bytes) -> CardFile:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # JSON saved as "Unicode" on Windows
        try:
            data = data.decode("utf-16").encode("utf-8")
        except UnicodeError as exc:
            raise CardFormatError(f"card JSON is not valid UTF-16 text: {exc}") from exc
    if png.is_png(data):
        chunks = png.read_chunks(data)
        texts = png.card_texts(chunks)
        payload = texts.get("ccv3") or texts.get("chara")  # V3 wins when both are there (spec)
        if payload is None:
            raise CardFormatError("PNG without a character card (no `chara` or `ccv3` tEXt chunk): a plain image, "
                                  "or one whose card an image editor or upload site stripped")
        keyword = "ccv3" if "ccv3" in texts else "chara"
        if payload.lstrip().startswith(b"{"):  # JSON as it is, not base64: a few writers do that
            card = decode_json(payload, f"the `{keyword}` chunk's")
        else:
            card = decode_json(b64decode(payload, f"the `{keyword}` chunk", MAX_JSON_BYTES))
        assets = {k.removeprefix(png.ASSET_PREFIX): v for k, v in texts.items() if k.startswith(png.ASSET_PREFIX)}
        return CardFile(card, "png", image=png.without_card(data), png_assets=assets)
    if is_zip(data) or (data.startswith(b"\xff\xd8\xff") and has_zip(data)):
        archive = CharxArchive(data)
        return CardFile(decode_json(archive.card_json(), "card.json"), "charx", charx=archive)
    if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"[")):
        raise _not_a_card(data)
    return CardFile(decode_json(data), "json")


def read_card_file(path: Path) -> CardFile:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CardLimitError(f"file is {size} bytes (limit {MAX_FILE_BYTES})", source=path)
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CardFormatError(f"cannot read: {exc}", source=path) from exc
    if len(data) > MAX_FILE_BYTES:
        raise CardLimitError(f"file is over {MAX_FILE_BYTES} bytes", source=path)
    try:
        return parse_card_bytes(data)
    except CardError as exc:
        raise exc.at(path) from exc.__cause__
