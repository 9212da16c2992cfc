"""PNG chunks, read and written by hand (no imaging library): cards live in `tEXt` chunks.

A PNG is an 8-byte signature and chunks: length (4 bytes, big-endian), type (4), data, CRC-32 of
type + data. Character cards put base64 JSON in a `tEXt` chunk whose keyword is `chara` (V2) or
`ccv3` (V3); V3 may add `chara-ext-asset_:PATH` chunks. Some tools write the card in a `zTXt` or
`iTXt` chunk instead, or spell the keyword `Chara`: read too. Reading checks every length against the
limits and every CRC, and stops at IEND. Writing uses plain `tEXt`, as the specs say.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from bot.cards.errors import CardFormatError, CardLimitError
from bot.cards.limits import MAX_PNG_CHUNK_BYTES, MAX_PNG_CHUNKS, MAX_PNG_TEXT_BYTES

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("chara", "ccv3")
ASSET_PREFIX = "chara-ext-asset_:"


@dataclass(frozen=True, slots=True)
class Chunk:
    type: bytes
    data: bytes

    def encode(self) -> bytes:
        return struct.pack(">I", len(self.data)) + self.type + self.data + struct.pack(
            ">I", zlib.crc32(self.type + self.data) & 0xFFFFFFFF
        )


def is_png(data: bytes) -> bool:
    return data.startswith(SIGNATURE)


def read_chunks(data: bytes) -> list[Chunk]:
    """Every chunk up to and including IEND. Raises CardFormatError / CardLimitError."""
    if not is_png(data):
        raise CardFormatError("not a PNG file (bad signature)")
    chunks: list[Chunk] = []
    pos = len(SIGNATURE)
    while True:
        if len(chunks) >= MAX_PNG_CHUNKS:
            raise CardLimitError(f"more than {MAX_PNG_CHUNKS} PNG chunks")
        if pos + 8 > len(data):
            raise CardFormatError("truncated PNG: no IEND chunk")
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        if length > MAX_PNG_CHUNK_BYTES:
            raise CardLimitError(f"PNG chunk {kind!r} of {length} bytes (limit {MAX_PNG_CHUNK_BYTES})")
        if not all(65 <= b <= 90 or 97 <= b <= 122 for b in kind):
            raise CardFormatError(f"corrupt PNG: bad chunk type {kind!r} at byte {pos}")
        end = pos + 12 + length
        if end > len(data):
            raise CardFormatError(f"truncated PNG: chunk {kind.decode('ascii')} runs past the end of the file")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise CardFormatError(f"corrupt PNG: CRC mismatch in chunk {kind.decode('ascii')}")
        chunks.append(Chunk(kind, body))
        pos = end
        if kind == b"IEND":
            return chunks


def _inflate(data: bytes, limit: int) -> bytes:
    """zlib data, refused when it inflates past `limit` (a compressed text chunk can be a bomb)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise CardFormatError(f"corrupt PNG: a compressed text chunk does not inflate ({exc})") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise CardLimitError(f"a compressed PNG text chunk inflates past {limit} bytes")
    return out


def text_of(chunk: Chunk, limit: int = MAX_PNG_CHUNK_BYTES) -> tuple[str, bytes] | None:
    """(keyword, text) of a text chunk: tEXt, and also zTXt and iTXt (compressed or not), which some
    card tools write; else None. Compressed text is inflated (to at most `limit` bytes) only for card
    keywords."""
    if chunk.type not in (b"tEXt", b"zTXt", b"iTXt") or b"\0" not in chunk.data:
        return None
    raw_keyword, _, rest = chunk.data.partition(b"\0")
    keyword = raw_keyword.decode("latin-1")
    if chunk.type == b"tEXt":
        return keyword, rest
    if not _is_card_keyword(keyword):
        return keyword, b""
    if chunk.type == b"zTXt":  # compression method byte, then zlib data
        return keyword, _inflate(rest[1:], limit)
    # iTXt: compression flag, method, language tag\0, translated keyword\0, text (UTF-8)
    if len(rest) < 2:
        raise CardFormatError(f"corrupt PNG: truncated iTXt chunk {keyword!r}")
    compressed, body = rest[0], rest[2:]
    parts = body.split(b"\0", 2)
    if len(parts) < 3:
        raise CardFormatError(f"corrupt PNG: truncated iTXt chunk {keyword!r}")
    return keyword, _inflate(parts[2], limit) if compressed else parts[2]


def _is_card_keyword(keyword: str) -> bool:
    return keyword.lower() in CARD_KEYWORDS or keyword.startswith(ASSET_PREFIX)


def card_texts(chunks: Iterable[Chunk]) -> dict[str, bytes]:
    """The card's text chunks by keyword: chara, ccv3 (any case, as SillyTavern reads them) and
    chara-ext-asset_:PATH (the first of each), all of them together inflating to at most
    MAX_PNG_TEXT_BYTES."""
    found: dict[str, bytes] = {}
    left = MAX_PNG_TEXT_BYTES
    for chunk in chunks:
        if not _is_card_chunk(chunk):
            continue
        keyword = chunk.data.partition(b"\0")[0].decode("latin-1")
        keyword = keyword.lower() if keyword.lower() in CARD_KEYWORDS else keyword
        if keyword in found:
            continue
        text = text_of(chunk, min(MAX_PNG_CHUNK_BYTES, left))
        assert text is not None
        found[keyword] = text[1]
        left -= len(text[1])
    return found


def _is_card_chunk(chunk: Chunk) -> bool:
    if chunk.type not in (b"tEXt", b"zTXt", b"iTXt"):
        return False
    keyword = chunk.data.partition(b"\0")[0].decode("latin-1")
    return _is_card_keyword(keyword)


def without_card(data: bytes) -> bytes:
    """The image with its card chunks removed (what becomes the persona's avatar)."""
    chunks = read_chunks(data)
    return SIGNATURE + b"".join(c.encode() for c in chunks if not _is_card_chunk(c))


def with_texts(image: bytes, texts: Iterable[tuple[str, bytes]]) -> bytes:
    """`image` with its card chunks replaced by `texts` (keyword, ASCII text), placed before IEND."""
    chunks = [c for c in read_chunks(image) if not _is_card_chunk(c)]
    new = [Chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text) for keyword, text in texts]
    return SIGNATURE + b"".join(c.encode() for c in [*chunks[:-1], *new, chunks[-1]])


def placeholder_png(size: int = 64, rgb: tuple[int, int, int] = (96, 96, 160)) -> bytes:
    """A plain square PNG, for exporting a persona that has no PNG avatar."""
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    row = b"\0" + bytes(rgb) * size
    return SIGNATURE + b"".join(
        c.encode() for c in (Chunk(b"IHDR", header), Chunk(b"IDAT", zlib.compress(row * size)), Chunk(b"IEND", b""))
    )
