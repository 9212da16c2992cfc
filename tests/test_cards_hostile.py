"""Hostile cards: each gets a clear CardError naming the file (and field), and nothing is written.
Ends with a seeded, time-bounded fuzz run over mutated cards that fails on any other exception."""

from __future__ import annotations

import base64
import copy
import io
import json
import random
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.cards import CardError, export_card, import_card
from bot.cards.errors import CardFormatError, CardLimitError
from tests import cards_fixtures as tools
from tests.cards_data import PNG_SIGNATURE, charx, chunk, png_card, text_chunk, tiny_png, v2_card, v3_card


def card_json(**data: Any) -> bytes:
    return json.dumps({"spec": "chara_card_v2", "data": {"name": "A", **data}}).encode()


def zip_of(members: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


def patched_zip(members: dict[str, bytes], patch: Callable[[zipfile.ZipInfo], None]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            patch(info)
            archive.writestr(info, data)
    return buffer.getvalue()


def lying_sizes() -> bytes:
    """A zip whose member declares 100 bytes but inflates to 5 MB."""
    card = json.dumps(asset_card("embeded://assets/big.bin")).encode()
    data = bytearray(zip_of({"card.json": card, "assets/big.bin": b"\0" * 5_000_000}))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = data.find(signature, data.find(b"assets/big.bin") - 60 if signature == b"PK\x03\x04" else 0)
        while pos >= 0:
            name_len = struct.unpack_from("<H", data, pos + (26 if signature == b"PK\x03\x04" else 28))[0]
            name_at = pos + (30 if signature == b"PK\x03\x04" else 46)
            if bytes(data[name_at : name_at + name_len]) == b"assets/big.bin":
                struct.pack_into("<I", data, pos + offset, 100)
            pos = data.find(signature, pos + 4)
    return bytes(data)


def nested(depth: int) -> bytes:
    return b'{"spec":"chara_card_v2","data":{"name":"A","extensions":{"x":' + b"[" * depth + b"]" * depth + b"}}}"


def png_with(*chunks: bytes, end: bool = True) -> bytes:
    return PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + b"".join(chunks) + (
        chunk(b"IEND", b"") if end else b"")


def asset_card(uri: str) -> dict[str, Any]:
    card = v3_card()
    card["data"]["assets"] = [{"type": "icon", "uri": uri, "name": "main", "ext": "png"}]
    return card


HOSTILE: dict[str, tuple[bytes, type[CardError], str]] = {
    "malformed JSON": (b'{"spec": "chara_card_v2", "data": {', CardFormatError, "malformed card JSON"),
    "not an object": (b"[1, 2, 3]", CardFormatError, "must be an object"),
    "not UTF-8": (b'{"name": "\xff\xfe"}', CardFormatError, "not UTF-8"),
    "wrong spec": (json.dumps({"spec": "chara_card_v9", "data": {"name": "A"}}).encode(), CardFormatError,
                   "unsupported spec 'chara_card_v9'"),
    "a lorebook, not a card": (json.dumps({"spec": "lorebook_v3", "data": {"entries": []}}).encode(),
                               CardFormatError, "import-lorebook"),
    "no data object": (json.dumps({"spec": "chara_card_v3", "data": "x"}).encode(), CardFormatError, r"\[data\]"),
    "no name": (json.dumps({"spec": "chara_card_v2", "data": {"description": "x"}}).encode(), CardFormatError,
                r"\[data.name\] Field required"),
    "wrong type": (card_json(alternate_greetings={"a": 1}), CardFormatError, r"\[data.alternate_greetings\]"),
    "not a card at all": (json.dumps({"hello": "world"}).encode(), CardFormatError, "not a character card"),
    "deeply nested": (nested(100_000), CardLimitError, "nested deeper"),
    "nested past the limit": (nested(70), CardLimitError, "nested deeper than 64"),
    "huge field": (card_json(description="x" * 300_000), CardFormatError, r"\[data.description\].*200000"),
    "huge number": (b'{"spec":"chara_card_v2","data":{"name":"A","creation_date":' + b"9" * 5000 + b"}}",
                    CardFormatError, "malformed card JSON"),
    "bad spec_version": (json.dumps({"spec": "chara_card_v3", "spec_version": "three", "data": {"name": "A"}})
                         .encode(), CardFormatError, "spec_version"),
    "bad base64": (png_with(text_chunk("chara", b"not base64!!")), CardFormatError, "not valid base64"),
    "base64 of garbage": (png_with(text_chunk("chara", base64.b64encode(b"\x00\x01garbage"))), CardFormatError,
                          "card JSON"),
    "PNG without card": (tiny_png(), CardFormatError, "no `chara` or `ccv3`"),
    "oversized PNG chunk": (PNG_SIGNATURE + struct.pack(">I", 2**31 - 1) + b"tEXt" + b"chara\0", CardLimitError,
                            "PNG chunk"),
    "PNG CRC mismatch": (png_with(text_chunk("chara", base64.b64encode(card_json()))[:-1] + b"\0"),
                         CardFormatError, "CRC mismatch"),
    "truncated PNG": (png_card(v2_card())[:-40], CardFormatError, "truncated PNG"),
    "PNG without IEND": (png_with(text_chunk("chara", base64.b64encode(card_json())), end=False), CardFormatError,
                         "no IEND"),
    "zip bomb (ratio)": (zip_of({"card.json": card_json(), "assets/bomb.bin": b"\0" * 20_000_000}), CardLimitError,
                         "zip bomb"),
    "zip bomb (lying sizes)": (lying_sizes(), CardError, "big.bin"),
    "zip path traversal": (zip_of({"card.json": card_json(), "../evil.png": b"x"}), CardFormatError, "unsafe path"),
    "zip absolute path": (zip_of({"card.json": card_json(), "/etc/evil": b"x"}), CardFormatError, "unsafe path"),
    "zip drive letter": (zip_of({"card.json": card_json(), "C:/evil": b"x"}), CardFormatError, "unsafe path"),
    "zip backslash": (zip_of({"card.json": card_json(), "..\\evil": b"x"}), CardFormatError, "unsafe path"),
    "zip symlink": (patched_zip({"card.json": card_json(), "assets/link": b"/etc/passwd"},
                                lambda i: setattr(i, "external_attr", (0o120777 << 16) if "link" in i.filename
                                                  else 0)), CardFormatError, "symbolic link"),
    "zip too many members": (zip_of({"card.json": card_json(), **{f"a/{n}": b"" for n in range(1001)}},
                                    method=zipfile.ZIP_STORED), CardLimitError, "members"),
    "zip without card.json": (zip_of({"other.json": card_json()}), CardFormatError, "without card.json"),
    "not a zip after all": (b"PK\x03\x04" + b"\0" * 100, CardFormatError, "not a readable zip"),
    "embedded path traversal outside CHARX": (json.dumps(asset_card("embeded://../x.png")).encode(),
                                              CardFormatError, "unsafe path"),
    "embedded asset path traversal": (charx(asset_card("embeded://../../etc/passwd"), {}), CardFormatError,
                                      "unsafe path"),
    "bad data URL": (json.dumps(asset_card("data:image/png;base64,@@@@")).encode(), CardFormatError,
                     "not valid base64"),
    "data URL not base64": (json.dumps(asset_card("data:text/plain,hello")).encode(), CardFormatError,
                            "must be base64"),
    "unknown macro": (card_json(first_mes="{{calc::1+1}}"), CardError, r"\[data.first_mes\] unknown macro"),
    "unknown macro in lore": (card_json(character_book={"entries": [{"keys": ["a"], "content": "{{#each x}}"}]}),
                              CardError, r"\[data.character_book.entries.0.content\]"),
    "too many lore entries": (card_json(character_book={"entries": [{"keys": ["a"], "content": "x"}] * 20_001}),
                              CardFormatError, "entries"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_card_is_refused_and_changes_nothing(tmp_path: Path, name: str) -> None:
    data, error, message = HOSTILE[name]
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "keep.yaml").write_text("id: keep\nname: Keep\nsystem_prompt: x\n")
    path = tmp_path / "card.bin"
    path.write_bytes(data)
    with pytest.raises(error, match=message) as caught:
        import_card(path, personas)
    assert str(path) in str(caught.value), "the error names the file"
    assert sorted(p.name for p in personas.rglob("*")) == ["keep.yaml"], "nothing written"


def test_duplicate_zip_members_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning):
        archive.writestr("card.json", card_json())
        archive.writestr("card.json", card_json(description="second"))
    path = tmp_path / "dup.charx"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CardFormatError, match="two members"):
        import_card(path, tmp_path / "p")


def test_invalid_regex_keys_are_left_out_as_no_match(tmp_path: Path) -> None:
    book = {"entries": [{"keys": ["/(unclosed/", "fine"], "content": "x"},
                        {"keys": ["(("], "use_regex": True, "content": "y"}]}
    path = tmp_path / "c.json"
    path.write_bytes(card_json(character_book=book))
    result = import_card(path, tmp_path / "p")
    first, second = result.persona.lorebook.entries  # type: ignore[union-attr]
    assert first.keys == ("fine",) and second.keys == ()
    assert len([w for w in result.warnings if "left out" in w]) == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CardFormatError, match="cannot read"):
        import_card(tmp_path / "nope.png", tmp_path / "p")


# -- fuzzing -------------------------------------------------------------------------------------

_WEIRD: list[Any] = [None, 0, -1, 10**12, 1.5, float("nan"), "", "x" * 5000, [], {}, True, "{{random:a,b}}",
                     "{{char}} and {user}", "@@depth 99999\ncontent", "/(a+)+$/", "<START>\nA: b", "\u202e\0\x7f",
                     [[[[[[[[[[[]]]]]]]]]]], {"keys": ["a"], "content": "b"}, ["a", 1, None],
                     # crash classes found by hand: Unicode digits (str.isdigit() says yes, int() says no),
                     # nested and broken macros, world-info shapes, JavaScript slips
                     "@@depth ²\n@@role ٣\n@@scan_depth ¹\nx", "²", "{{random::{{user}}::{{char", "}}{{}}{{{",
                     "{{pick::a::{{roll:²}}}}", {"7": {"uid": "x", "key": "a, b", "position": 4, "displayIndex": "²"}},
                     {"²": {"key": ["a"]}}, "undefined", "a, /b,c/i", {"prompt": "x", "depth": "²", "role": 9}]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:6]):
            out += _paths(v, (*prefix, i))
    return out


def mutate_json(card: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    card = copy.deepcopy(card)
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(_paths(card)[1:])
        parent: Any = card
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict) and rng.random() < 0.2:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(_WEIRD))
    return card


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(data)
    match rng.randrange(4):
        case 0:
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        case 1:
            del raw[rng.randrange(len(raw)) :]
        case 2:
            at = rng.randrange(len(raw))
            raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        case _:
            at, size = rng.randrange(len(raw)), rng.randint(1, 200)
            raw[at:at] = raw[at : at + size] * rng.randint(1, 5)
    return bytes(raw)


def fuzz_case(rng: random.Random) -> bytes:
    card = rng.choice([v2_card, v3_card, tools.sillytavern_card, tools.chub_card, tools.agnai_card,
                       tools.backyard_card, tools.v1_card])()
    kind = rng.randrange(6)
    if kind in (0, 1):
        text = json.dumps(mutate_json(card, rng) if kind == 0 else card).encode()
        return text if kind == 0 else mutate_bytes(text, rng)
    if kind in (2, 3):
        wrap = rng.choice([png_card, tools.sillytavern_png, tools.itxt_png])
        container = wrap(mutate_json(card, rng)) if kind == 2 else wrap(card)
        return container if kind == 2 else mutate_bytes(container, rng)
    if rng.random() < 0.5:  # as RisuAI writes it: its card and assets, sometimes after a JPEG image
        risu = tools.risu_card()
        archive = tools.risu_charx(mutate_json(risu, rng) if kind == 4 else risu, jpeg=rng.random() < 0.3)
    else:
        icon = asset_card("embeded://assets/icon/main.png")
        archive = charx(mutate_json(icon, rng) if kind == 4 else icon, {"assets/icon/main.png": tiny_png()})
    return archive if kind == 4 else mutate_bytes(archive, rng)


def test_fuzzed_cards_never_crash_and_round_trip(tmp_path: Path) -> None:
    """Seeded and bounded (at most 400 cards or ~8 s): every outcome is an import or a CardError, and
    an imported card exported in its own format (JSON, PNG; CHARX as V3 JSON) imports as the same persona."""
    seed = 13
    rng = random.Random(seed)
    deadline = time.monotonic() + 8
    outcomes = {"imported": 0, "refused": 0}
    for n in range(400):
        if time.monotonic() > deadline:
            break
        data = fuzz_case(rng)
        path = tmp_path / f"case{n}"
        path.write_bytes(data)
        try:
            result = import_card(path, tmp_path / "p", persona_id="fuzz", force=True,
                                 keep_unknown_macros=rng.random() < 0.5)
        except CardError:
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # pragma: no cover - the failure this test exists to catch
            pytest.fail(f"case {n} (seed {seed}) raised {type(exc).__name__}: {exc}")
        outcomes["imported"] += 1
        card = result.persona.card
        v3 = data.startswith((b"PK", b"\xff\xd8")) or (card is not None and card.spec == "chara_card_v3")
        exported, _, _ = export_card(result.persona, tmp_path / "p", v3=v3, png_file=data.startswith(PNG_SIGNATURE))
        again = tmp_path / f"again{n}"
        again.write_bytes(exported)
        second = import_card(again, tmp_path / f"q{n}", persona_id="fuzz", keep_unknown_macros=True)
        first = result.persona
        if card is not None and card.spec == "chara_card_v1":  # a V1 card exports as V2
            first = first.model_copy(update={"card": card.model_copy(update={"spec": "chara_card_v2"})})
        assert second.persona == first, f"case {n} (seed {seed}) changed in a round trip"
    assert outcomes["imported"] > 10 and outcomes["refused"] > 10, outcomes
