"""`personas check`: everything start-up would refuse, found without loading a model.

Persona files as the loader reads them (every problem, file:line:column), then each persona's
adapters (its own and its variants') the way the provider checks them at start-up: inside the
adapters directory, a PEFT directory of a kind its backend can serve, trained for exactly this
base model, with tensor widths that fit it. Widths come from the safetensors header and the base
model's config (config.json, or the GGUF file's metadata): no weights are read, no torch imported
for Llama-family models.

    report = check_personas(settings)
    report.ok, report.problems, report.rows, report.to_dict()
"""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bot.adapters.errors import AdapterError
from bot.adapters.spec import BaseModelInfo, check_compatible, read_adapter
from bot.domain.persona import Persona
from bot.errors import BotError, PersonaFileError
from bot.personas.documents import read_document
from bot.personas.loader import LoadResult, field_name, load_directory
from bot.settings import Settings


@dataclass(frozen=True)
class PersonaRow:
    id: str
    name: str
    version: str
    backend: str
    adapter: str
    examples: int
    file: str
    status: str = "ok"

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("id", "name", "version", "backend", "adapter", "examples", "file",
                                               "status")}


@dataclass
class CheckReport:
    directory: Path
    rows: list[PersonaRow] = field(default_factory=list)
    problems: list[PersonaFileError] = field(default_factory=list)
    #: What could not be checked and why (not a failure: e.g. no local model to compare widths with).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "directory": str(self.directory),
            "ok": self.ok,
            "personas": [r.to_dict() for r in self.rows],
            "problems": [p.to_dict() for p in self.problems],
            "notes": self.notes,
        }


def check_personas(settings: Settings, directory: Path | None = None) -> CheckReport:
    where = directory or settings.personas_dir
    result = load_directory(where, adapters_root=settings.adapters_dir)
    report = CheckReport(where, problems=list(result.errors))
    base: tuple[BaseModelInfo, Any] | str | None = None  # loaded on first need; a str says why not
    for persona_id, persona in sorted(result.personas.items()):
        backend = persona.model.backend or settings.model.backend
        failures: list[PersonaFileError] = []
        for loc, adapter in _adapters(persona):
            if backend == "scripted":
                continue
            if base is None and backend == "local":
                base = _base_model(settings)
                if isinstance(base, str):
                    report.notes.append(f"adapter widths not checked: {base}")
            why = _adapter_problem(adapter, persona_id, backend, base if not isinstance(base, str) else None)
            if why is not None:
                failures.append(_at(result, persona_id, loc, why))
        report.problems += failures
        report.rows.append(PersonaRow(
            persona_id, persona.name, persona.version,
            backend if persona.model.backend else f"{backend} (default)",
            persona.adapter or "-", len(persona.examples), str(result.sources[persona_id]),
            "ok" if not failures else f"{len(failures)} problem(s)",
        ))
    if not result.personas and not report.problems:
        report.problems.append(PersonaFileError(where, "no persona files (*.yaml) found"))
    return report


def _adapters(persona: Persona) -> list[tuple[tuple[str | int, ...], str]]:
    found: list[tuple[tuple[str | int, ...], str]] = []
    if persona.adapter:
        found.append((("adapter",), persona.adapter))
    found += [(("variants", i, "adapter"), v.adapter) for i, v in enumerate(persona.variants) if v.adapter]
    return found


def _adapter_problem(adapter: str, persona_id: str, backend: str, base: tuple[BaseModelInfo, Any] | None) -> str | None:
    try:
        spec = read_adapter(Path(adapter), persona_id, load_weights=False)
        if backend == "openai":
            if spec.kind != "lora":
                return (f"adapter {adapter}: soft prompts cannot be served by an OpenAI-compatible server "
                        "(vLLM serves LoRA only); use the local backend for this persona")
            return None
        if base is not None:
            check_compatible(spec, base[0], base[1], persona_id)
    except AdapterError as exc:
        return str(exc).removeprefix(f"persona {persona_id!r}: ")
    return None


def _at(result: LoadResult, persona_id: str, loc: tuple[str | int, ...], message: str) -> PersonaFileError:
    path = result.sources[persona_id]
    line = column = None
    with contextlib.suppress(BotError):
        line, column = read_document(path, root=path.parent).locate(loc)
    return PersonaFileError(path, message, field=field_name(loc), line=line, column=column)


# -- the base model, from its config alone ----------------------------------------------------------


@dataclass(frozen=True)
class _Linear:
    in_features: int
    out_features: int


class ShapeModel:
    """Just enough of a model for `check_compatible`: `named_modules()` of Llama-family linear
    layers with their in/out widths, computed from the config."""

    def __init__(self, config: dict[str, Any]) -> None:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        inter = int(config["intermediate_size"])
        shapes = {
            "self_attn.q_proj": (hidden, heads * head_dim),
            "self_attn.k_proj": (hidden, kv_heads * head_dim),
            "self_attn.v_proj": (hidden, kv_heads * head_dim),
            "self_attn.o_proj": (heads * head_dim, hidden),
            "mlp.gate_proj": (hidden, inter),
            "mlp.up_proj": (hidden, inter),
            "mlp.down_proj": (inter, hidden),
        }
        self._modules = {
            f"model.layers.{i}.{name}": _Linear(*shape)
            for i in range(int(config["num_hidden_layers"]))
            for name, shape in shapes.items()
        }
        self._modules["lm_head"] = _Linear(hidden, int(config["vocab_size"]))

    def named_modules(self) -> list[tuple[str, _Linear]]:
        return list(self._modules.items())


def _base_model(settings: Settings) -> tuple[BaseModelInfo, Any] | str:
    """(identity and shapes of the configured local model, a ShapeModel), or why they are unknown."""
    from bot.models.local_loader import cache_dir_for, model_source

    try:
        source, gguf, name = model_source(settings.model)
    except BotError as exc:
        return str(exc)
    try:
        if gguf is None:
            config = json.loads((source / "config.json").read_text(encoding="utf-8"))
            aliases: tuple[str, ...] = (source.name, str(source))
        else:
            cached = cache_dir_for(settings.data_dir, source, gguf)
            config = (json.loads((cached / "config.json").read_text(encoding="utf-8"))
                      if (cached / "config.json").is_file() else gguf_config(source / gguf))
            aliases = (cached.name, str(cached), gguf)
        if str(config.get("model_type", "llama")) not in LLAMA_FAMILY:
            return f"model type {config.get('model_type')!r}: widths are checked for Llama-family models only"
        info = BaseModelInfo(
            name=name,
            architecture=(config.get("architectures") or ["LlamaForCausalLM"])[0],
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            vocab_size=int(config["vocab_size"]),
            aliases=tuple(a for a in aliases if a),
        )
        return info, ShapeModel(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"cannot read the base model's config: {exc}"


LLAMA_FAMILY = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3"})

# -- GGUF metadata (the few keys a config needs; the tensors are never read) -------------------------

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def gguf_config(path: Path) -> dict[str, Any]:
    """A transformers-style config from a GGUF file's metadata (Llama family)."""
    meta = _gguf_metadata(path)
    arch = str(meta.get("general.architecture", "llama"))

    def get(key: str) -> Any:
        return meta.get(f"{arch}.{key}")

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    return {
        "model_type": arch,
        "architectures": ["LlamaForCausalLM"] if arch == "llama" else [],
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv") or heads),
        "head_dim": int(get("attention.key_length") or hidden // heads),
        "intermediate_size": int(get("feed_forward_length")),
        "vocab_size": int(get("vocab_size") or meta.get("tokenizer.ggml.tokens", 0)),
    }


def _gguf_metadata(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _tensors, count = struct.unpack("<IQQ", file.read(20))
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        meta: dict[str, Any] = {}
        for _ in range(min(count, 10_000)):
            key = _gguf_string(file)
            kind = struct.unpack("<I", file.read(4))[0]
            meta[key] = _gguf_value(file, kind)
        return meta


def _gguf_string(file: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", file.read(8))
    if length > 1 << 20:
        raise ValueError("GGUF string too long")
    return file.read(length).decode("utf-8", errors="replace")


def _gguf_value(file: BinaryIO, kind: int) -> Any:
    if kind in _GGUF_SCALARS:
        fmt = "<" + _GGUF_SCALARS[kind]
        return struct.unpack(fmt, file.read(struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _gguf_string(file)
    if kind == _ARRAY:
        item, length = struct.unpack("<IQ", file.read(12))
        if item in _GGUF_SCALARS:  # skipped in one seek: only its length is kept
            file.seek(length * struct.calcsize("<" + _GGUF_SCALARS[item]), 1)
            return length
        for _ in range(length):
            _gguf_value(file, item)
        return length
    raise ValueError(f"unknown GGUF value type {kind}")
