"""Limits on what a card may contain. A card is a file from the internet: everything is bounded
before it is read, decompressed, parsed or written. The README lists these."""

from __future__ import annotations

#: The card file itself (JSON, PNG or CHARX).
MAX_FILE_BYTES = 64 * 1024 * 1024
#: The card's JSON text (after base64 decoding or unzipping).
MAX_JSON_BYTES = 16 * 1024 * 1024
#: Nesting of JSON objects and arrays (`extensions` may hold anything, but not a 10,000-deep tower).
MAX_JSON_DEPTH = 64
#: Objects, arrays and values in the card's JSON altogether.
MAX_JSON_NODES = 2_000_000
#: One text field (description, first_mes...).
MAX_TEXT_CHARS = 200_000
#: One PNG chunk, and chunks in a PNG.
MAX_PNG_CHUNK_BYTES = 32 * 1024 * 1024
MAX_PNG_CHUNKS = 10_000
#: The card's text chunks together, after inflating compressed (zTXt, iTXt) ones.
MAX_PNG_TEXT_BYTES = 128 * 1024 * 1024
#: CHARX (zip): members, each member and all members uncompressed, and the compression ratio of a member.
MAX_ZIP_MEMBERS = 1_000
MAX_ZIP_MEMBER_BYTES = 32 * 1024 * 1024
MAX_ZIP_TOTAL_BYTES = 128 * 1024 * 1024
MAX_ZIP_RATIO = 200
#: Assets written next to the persona (all of one card), and one asset.
MAX_ASSET_BYTES = 32 * 1024 * 1024
MAX_ASSETS_BYTES = 128 * 1024 * 1024
MAX_ASSETS = 500
