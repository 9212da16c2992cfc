"""Card assets on import: extracted next to the persona (`assets/<id>/<type>/<name>.<ext>`), never
downloaded. Where each asset's bytes come from:

    ccdefault:            the PNG card's own image (icons); nothing for other cards
    embeded://PATH        the CHARX member PATH (checked like every zip path)
    __asset:PATH          a PNG card's `chara-ext-asset_:PATH` chunk (base64)
(an asset whose file is not there, e.g. embeded:// in a card.json taken out of its CHARX, is left
out with a warning; a path that leaves the archive is an error)
    data:...;base64,...   the data URL itself
    https://, http://     kept as a link (the main icon becomes the identity's avatar_url)

The main icon (type icon, name main; else the first icon) becomes the persona's identity avatar when
it is a PNG, JPEG, GIF or WebP image.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from bot.cards.charx import safe_member_name
from bot.cards.errors import CardFormatError, CardLimitError
from bot.cards.limits import MAX_ASSET_BYTES, MAX_ASSETS, MAX_ASSETS_BYTES
from bot.cards.reader import CardFile, b64decode
from bot.cards.schema import CardAssetIn

DEFAULT_ICON = CardAssetIn(type="icon", uri="ccdefault:", name="main", ext="png")
MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif",
        "avif": "image/avif", "mp3": "audio/mpeg", "ogg": "audio/ogg", "mp4": "video/mp4", "webm": "video/webm"}


def image_kind(data: bytes) -> str | None:
    """png, jpg, gif or webp by the bytes, else None."""
    for magic, kind in ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"),
                        (b"GIF89a", "gif")):
        if data.startswith(magic):
            return kind
    return "webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None


def is_image(data: bytes) -> bool:
    return image_kind(data) is not None


def _slug(text: str, fallback: str) -> str:
    """A file name part: letters (any script: RisuAI names assets in the card's language), digits, - and _."""
    return re.sub(r"[^\w-]+", "_", unicodedata.normalize("NFC", text)).strip("_.")[:64] or fallback


@dataclass(frozen=True, slots=True)
class AssetFile:
    path: str  # relative to the personas directory: assets/<id>/...
    data: bytes


@dataclass
class AssetPlan:
    files: list[AssetFile] = field(default_factory=list)
    #: The card's assets as the persona keeps them (CardAsset fields; local paths for extracted files).
    entries: list[dict[str, Any]] = field(default_factory=list)
    avatar_path: str | None = None
    avatar_url: str | None = None
    warnings: list[str] = field(default_factory=list)


class _Missing(Exception):
    """The asset's bytes are not in this file: left out with a warning, the card imports."""


def _bytes_of(asset: CardAssetIn, card: CardFile, where: str) -> bytes | None:
    uri = asset.uri
    if uri == "ccdefault:":
        return card.image if asset.type == "icon" else None
    if uri.startswith(("embeded://", "embedded://")):
        path = safe_member_name(uri.split("://", 1)[1])
        if card.charx is None:
            raise _Missing(f"{uri[:100]} is a file of a CHARX, and this is a {card.kind.upper()} card")
        if path not in card.charx.names():
            raise _Missing(f"the CHARX has no file {path[:100]!r}")
        return card.charx.read(path, MAX_ASSET_BYTES)
    if uri.startswith("__asset:"):
        blob = card.png_assets.get(uri.removeprefix("__asset:"))
        if blob is None:
            raise _Missing(f"{uri[:100]}: the card has no `chara-ext-asset_:` chunk for it")
        return b64decode(blob, f"asset {uri[:60]!r}", MAX_ASSET_BYTES)
    if uri.startswith("data:"):
        header, sep, payload = uri.partition(",")
        if not sep or not header.endswith(";base64"):
            raise CardFormatError("data URL assets must be base64", field=where)
        return b64decode(payload, "a data URL asset", MAX_ASSET_BYTES)
    return None


def plan_assets(card: CardFile, assets: list[CardAssetIn] | None, persona_id: str) -> AssetPlan:
    """Which files to write and what the persona records, for a card's `assets` (V2: the default icon)."""
    plan = AssetPlan()
    listed = [DEFAULT_ICON] if assets is None else assets
    if len(listed) > MAX_ASSETS:
        raise CardLimitError(f"{len(listed)} assets (limit {MAX_ASSETS})", field="data.assets")
    used: set[str] = set()
    total = 0
    for i, asset in enumerate(listed):
        where = f"data.assets.{i}"
        try:
            data = _bytes_of(asset, card, where)
        except _Missing as missing:
            plan.warnings.append(f"asset {asset.name or i} left out: {missing}")
            continue
        # The file's name says what its bytes are (cards mislabel: RisuAI's "unknown", WebP called png...).
        ext = image_kind(data) if data else None
        ext = ext or re.sub(r"[^a-z0-9]", "", asset.ext.lower())[:10] or "bin"
        entry = {"type": asset.type, "uri": asset.uri, "name": asset.name, "ext": asset.ext}
        if data is not None:
            total += len(data)
            if total > MAX_ASSETS_BYTES:
                raise CardLimitError(f"assets over {MAX_ASSETS_BYTES} bytes altogether", field=where)
            stem = f"assets/{persona_id}/{_slug(asset.type, 'other')}/{_slug(asset.name, 'asset')}"
            path, n = f"{stem}.{ext}", 1
            while path in used:
                n += 1
                path = f"{stem}-{n}.{ext}"
            used.add(path)
            plan.files.append(AssetFile(path, data))
            entry["uri"] = path
        elif asset.uri.startswith("data:") or (asset.uri == "ccdefault:" and assets is None):
            continue  # nothing to keep: a data URL without data, or V2's implied icon without an image
        elif not asset.uri.startswith(("https://", "http://", "ccdefault:")):
            plan.warnings.append(f"asset {asset.name or i} ({asset.uri[:60]}): unsupported URI, kept as a link")
        plan.entries.append(entry)
    icons = [e for e in plan.entries if e["type"] == "icon"]
    main = next((e for e in icons if e["name"] == "main"), icons[0] if icons else None)
    if main is not None:
        if main["uri"].startswith("https://"):
            plan.avatar_url = main["uri"]
        elif main["uri"].startswith("assets/"):
            data = next(f.data for f in plan.files if f.path == main["uri"])
            if is_image(data):
                plan.avatar_path = main["uri"]
            else:
                plan.warnings.append("the main icon is not a PNG, JPEG, GIF or WebP image: no avatar")
    return plan
