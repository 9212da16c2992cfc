"""CHARX (Character Card V3): a zip with `card.json` at its root and assets, read defensively.

Before anything is decompressed: the member count, each member's declared size and compression ratio,
their total, and every name (no absolute paths, no `..`, no backslashes or drive letters, no
duplicates, no links, no encryption) are checked. While decompressing, actual sizes are counted too,
since a zip's declared sizes can lie.
"""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import PurePosixPath

from bot.cards.errors import CardFormatError, CardLimitError
from bot.cards.limits import (
    MAX_JSON_BYTES,
    MAX_ZIP_MEMBER_BYTES,
    MAX_ZIP_MEMBERS,
    MAX_ZIP_RATIO,
    MAX_ZIP_TOTAL_BYTES,
)

ZIP_MAGIC = b"PK\x03\x04"
CARD_JSON = "card.json"


def is_zip(data: bytes) -> bool:
    return data.startswith(ZIP_MAGIC)


def has_zip(data: bytes) -> bool:
    """Whether a zip ends `data` (its end-of-central-directory record in the last 64 KiB): a zip
    written after another file, as RisuAI writes CHARX after a JPEG image."""
    return b"PK\x05\x06" in data[-(65_536 + 22) :] and ZIP_MAGIC in data


def safe_member_name(name: str) -> str:
    """A zip member's name if it stays inside the archive's root, else CardFormatError."""
    if not name or "\\" in name or "\0" in name or name.startswith("/") or ":" in name.split("/", 1)[0]:
        raise CardFormatError(f"unsafe path in zip: {name[:200]!r}")
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".") for p in name.split("/")) or not parts:
        raise CardFormatError(f"unsafe path in zip: {name[:200]!r}")
    return "/".join(parts)


class CharxArchive:
    """An opened, checked CHARX: `card_json()` and `read(path)` for assets, within the limits."""

    def __init__(self, data: bytes) -> None:
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except Exception as exc:  # zipfile parses untrusted bytes: any failure is "not a readable zip"
            raise CardFormatError(f"not a readable zip (CHARX) file: {exc}") from exc
        if len(infos) > MAX_ZIP_MEMBERS:
            raise CardLimitError(f"zip has {len(infos)} members (limit {MAX_ZIP_MEMBERS})")
        self._members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = safe_member_name(info.filename)
            if info.is_dir():
                continue
            if name in self._members:
                raise CardFormatError(f"zip has two members named {name!r}")
            if info.flag_bits & 0x1:
                raise CardFormatError(f"zip member {name!r} is encrypted")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise CardFormatError(f"zip member {name!r} is a symbolic link")
            if info.file_size > MAX_ZIP_MEMBER_BYTES:
                raise CardLimitError(f"zip member {name!r} is {info.file_size} bytes (limit {MAX_ZIP_MEMBER_BYTES})")
            if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) and info.file_size > 1024 * 1024:
                raise CardLimitError(f"zip member {name!r} expands {info.file_size // max(info.compress_size, 1)}x "
                                     f"(limit {MAX_ZIP_RATIO}x): a zip bomb?")
            total += info.file_size
            self._members[name] = info
        if total > MAX_ZIP_TOTAL_BYTES:
            raise CardLimitError(f"zip expands to {total} bytes (limit {MAX_ZIP_TOTAL_BYTES})")
        if CARD_JSON not in self._members:
            # A CHARX unzipped and zipped again as a folder: FOLDER/card.json, FOLDER/assets/...
            nested = [n for n in self._members if n.endswith("/" + CARD_JSON) and n.count("/") == 1]
            if len(nested) != 1:
                if "manifest.json" in self._members:
                    raise CardFormatError("a Backyard AI archive (.byaf), not a CHARX: export the character from "
                                          "Backyard as a PNG character card and import that")
                raise CardFormatError("CHARX file without card.json at its root")
            folder = nested[0].removesuffix(CARD_JSON)
            self._members = {n.removeprefix(folder): i for n, i in self._members.items() if n.startswith(folder)}
        self._read_total = 0

    def names(self) -> list[str]:
        return sorted(self._members)

    def read(self, name: str, limit: int = MAX_ZIP_MEMBER_BYTES) -> bytes:
        """A member's bytes, counting what decompression really yields (declared sizes can lie)."""
        info = self._members.get(name)
        if info is None:
            raise CardFormatError(f"the CHARX has no file {name!r}")
        cap = min(limit, info.file_size)
        try:
            with self._zip.open(info) as member:
                data = member.read(cap + 1)
        except Exception as exc:  # as above: zlib, lzma, bz2 and zipfile errors alike
            raise CardFormatError(f"cannot decompress {name!r}: {exc}") from exc
        if len(data) > cap:
            raise CardLimitError(f"zip member {name!r} is larger than it declares or than {limit} bytes")
        self._read_total += len(data)
        if self._read_total > MAX_ZIP_TOTAL_BYTES:
            raise CardLimitError(f"zip expands to more than {MAX_ZIP_TOTAL_BYTES} bytes")
        return data

    def card_json(self) -> bytes:
        return self.read(CARD_JSON, MAX_JSON_BYTES)
