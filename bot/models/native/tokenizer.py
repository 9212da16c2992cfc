"""The tokenizer and chat template without transformers: `tokenizers` + jinja2, from a cached artifact.

    tokenizer = ChatTokenizer.load(directory / TOKENIZER_DIR)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]

Importing transformers costs seconds; its tokenizer is a `tokenizers.Tokenizer` (configured by
transformers at load: post-processor, added and special tokens) plus a Jinja chat template rendered in
a sandbox. `write_artifact` saves exactly those (the backend tokenizer as transformers configured it,
the template, the special tokens) from a transformers tokenizer, once, and checks on probe
conversations and texts that `ChatTokenizer` reproduces transformers' token ids and text. A model whose
artifact does not reproduce them is served with transformers' tokenizer instead.

Mirrors transformers 5's `apply_chat_template` defaults: the template sees `messages` (keys whose value
is None dropped), `add_generation_prompt` and the special tokens (`bos_token`, `eos_token`, ...); the
Jinja environment is an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the
`loopcontrols` extension, a `{% generation %}` tag, `tojson` (no ASCII escaping), `raise_exception`,
`strftime_now`, and the rendered text is tokenized without adding special tokens.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKENIZER_DIR = "native-tokenizer"
BACKEND_FILE = "tokenizer.json"
CONFIG_FILE = "chat.json"
#: Bumped when the artifact's meaning changes: older artifacts are written again.
ARTIFACT_VERSION = 1

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TemplateError(Exception):
    """The chat template raised (`raise_exception`) or could not be rendered."""


def _environment() -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks): rendered as is."""

        tags = {"generation"}  # noqa: RUF012  (jinja2 declares it this way)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return str(caller())

    class Namespace(jinja2.utils.Namespace):
        """Jinja's namespace without underscore attributes (as transformers: no way to CPython internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: object) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot store {name!r} on a namespace")

    class Dict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=Dict(), namespace=Namespace)
    return env


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """As transformers hands them to the template: plain dicts, keys with None values dropped,
    reasoning copied under the names templates read."""
    out = []
    for message in messages:
        plain = {str(k): v for k, v in message.items() if v is not None}
        reasoning = next((plain[k] for k in _REASONING_FIELDS if plain.get(k) is not None), None)
        if reasoning is not None:
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        out.append(plain)
    return out


class ChatTokenizer:
    """The parts of a transformers tokenizer the bot uses, on `tokenizers` and jinja2 alone."""

    def __init__(self, backend: Any, special_tokens: Mapping[str, str], chat_template: str | None) -> None:
        self.backend = backend
        backend.no_padding()  # one sequence at a time, as the bot encodes
        backend.no_truncation()
        self.special_tokens = dict(special_tokens)
        self.chat_template = chat_template
        self._template = _environment().from_string(chat_template) if chat_template else None
        self.eos_token = self.special_tokens.get("eos_token")
        self.bos_token = self.special_tokens.get("bos_token")
        self.pad_token = self.special_tokens.get("pad_token") or self.eos_token
        self.eos_token_id = self._id(self.eos_token)
        self.bos_token_id = self._id(self.bos_token)
        self.pad_token_id = self._id(self.pad_token)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @classmethod
    def load(cls, directory: Path) -> ChatTokenizer:
        """From an artifact written by `write_artifact` (OSError/ValueError when missing or unreadable)."""
        from tokenizers import Tokenizer

        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        if config.get("version") != ARTIFACT_VERSION:
            raise ValueError(f"tokenizer artifact version {config.get('version')} != {ARTIFACT_VERSION}")
        backend = Tokenizer.from_file(str(directory / BACKEND_FILE))
        return cls(backend, config["special_tokens"], config.get("chat_template"))

    # -- the transformers tokenizer API the bot uses -------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False) -> str:
        if self._template is None:
            raise TemplateError("this tokenizer has no chat template")
        import jinja2

        try:
            return str(self._template.render(messages=_template_messages(messages), tools=None, documents=None,
                                             add_generation_prompt=add_generation_prompt, **self.special_tokens))
        except jinja2.TemplateError as exc:
            raise TemplateError(str(exc)) from exc

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                            tokenize: bool = True, return_dict: bool = False, **_: Any) -> Any:
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        if not tokenize:
            return text
        ids = self.encode(text, add_special_tokens=False)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)} if return_dict else ids


#: Conversations the artifact must render and tokenize exactly as transformers does.
PROBE_CHATS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are a pirate. Speak like one."}, {"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Spain?  "}],
    [{"role": "user", "content": "ünïcödé, 日本語, emoji 🙂 and <|im_start|> inside text\n\n  spaced\tout"},
     {"role": "assistant", "content": ""}, {"role": "user", "content": "{{ not a template }} {% raw %}"}],
]
PROBE_TEXTS = ["Hello world", "  leading spaces and\nnew lines\n", "ünïcödé 日本語 🙂", "<|im_end|> special?", ""]


def mismatches(ours: ChatTokenizer, reference: Any) -> list[str]:
    """Where `ours` differs from a transformers tokenizer on the probes (empty: none)."""
    found = []
    for chat in PROBE_CHATS:
        for generation in (False, True):
            try:
                mine = ours.apply_chat_template(chat, add_generation_prompt=generation)
            except TemplateError as exc:
                mine = f"error: {exc}"
            theirs = list(reference.apply_chat_template(chat, add_generation_prompt=generation, return_dict=True)
                          ["input_ids"])
            if mine != theirs:
                found.append(f"chat template on {chat[:1]}… (generation prompt {generation})")
    for text in PROBE_TEXTS:
        for special in (False, True):
            if ours.encode(text, special) != list(reference.encode(text, add_special_tokens=special)):
                found.append(f"encode({text!r}, add_special_tokens={special})")
        ids = list(reference.encode(text, add_special_tokens=True)) + [i for i in (ours.eos_token_id,) if i is not None]
        for skip in (False, True):
            if ours.decode(ids, skip) != reference.decode(ids, skip_special_tokens=skip):
                found.append(f"decode of {text!r} (skip_special_tokens={skip})")
    return found


def write_artifact(reference: Any, directory: Path) -> list[str]:
    """Save a transformers tokenizer as a ChatTokenizer artifact (atomically); returns the probes on
    which it differs from transformers (then nothing is written: the model keeps transformers' tokenizer)."""
    template = reference.chat_template if isinstance(reference.chat_template, str) else None
    specials = {name: str(getattr(reference, name)) for name in _SPECIAL_NAMES if getattr(reference, name, None)}
    if "pad_token" not in specials and "eos_token" in specials:
        specials["pad_token"] = specials["eos_token"]  # as the loader sets it
    from tokenizers import Tokenizer

    ours = ChatTokenizer(Tokenizer.from_str(reference.backend_tokenizer.to_str()), specials, template)
    problems = mismatches(ours, reference)
    if problems:
        return problems
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / BACKEND_FILE).write_text(reference.backend_tokenizer.to_str(), encoding="utf-8")
    (tmp / CONFIG_FILE).write_text(json.dumps({"version": ARTIFACT_VERSION, "special_tokens": specials,
                                               "chat_template": template}, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return []
