"""AdapterBank: every adapter served from the one shared base model.

LoRA adapters all live in ONE PeftModel wrapped around the base model (`load_adapter(...,
adapter_name=...)`); a batch picks an adapter per row with `adapter_names` ("__base__": none).
Soft prompts are small [virtual_tokens, hidden] tensors prepended to the token embeddings by
`bot.adapters.batch` -- PEFT's own prompt-tuning `generate()` is not used: with transformers 5 its
cache hook misses the KV cache and re-inserts the soft prompt at every step (garbage output), and
prompt tuning and LoRA cannot share a PeftModel anyway.

Wrapping injects LoRA layers into the base model's modules IN PLACE: from the first LoRA on, a
plain `model.generate()` would apply the active adapter to every row. All generation must therefore
go through `build_batch` (which always names each row's adapter) and `generator`.

Many adapters (bot.adapters.lru, shared with the native engine's bank): at most `max_loaded_lora`
LoRA adapters are held in the PeftModel, least recently used unloaded first, never one a row still
decodes with. So 1,000 LoRA personas cost the memory of the few that are talking, plus one load
(`load_seconds`) when a quiet one speaks again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from bot.adapters.errors import AdapterError
from bot.adapters.lru import BASE, AdapterLru, LoadedAdapter
from bot.adapters.spec import AdapterSpec, BaseModelInfo

__all__ = ["BASE", "AdapterBank", "LoadedAdapter"]


class AdapterBank(AdapterLru):
    def __init__(self, model: Any, base: BaseModelInfo, *, max_loaded_lora: int | None = None,
                 in_use: Callable[[], set[str]] | None = None) -> None:
        if any(hasattr(module, "lora_A") for module in model.modules()):
            # Another bank (or a training run) injected LoRA layers: a plain call would apply them.
            raise ValueError("this model already carries LoRA layers; use one AdapterBank per loaded model")
        super().__init__(model, base, max_loaded_lora=max_loaded_lora, in_use=in_use)
        self.peft_model: Any = None

    @property
    def generator(self) -> Any:
        """The module to call generate()/forward() on: the PeftModel once a LoRA is loaded."""
        return self.base_model if self.peft_model is None else self.peft_model

    @property
    def has_lora(self) -> bool:
        return self.peft_model is not None

    def _soft_prompt(self, tensor: Any) -> Any:
        return tensor.to(self.base_model.get_input_embeddings().weight.dtype)

    def _load_lora(self, spec: AdapterSpec, name: str, persona_id: str | None) -> None:
        from peft import PeftModel

        path = spec.path
        try:
            if self.peft_model is None:
                with warnings.catch_warnings():
                    # peft 0.21 calls a transformers 5 property that warns of its own deprecation; the
                    # warning says nothing to the bot's user and would interleave with a console chat.
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                    self.peft_model = PeftModel.from_pretrained(self.base_model, str(path), adapter_name=name)
                self.peft_model.eval()
            else:
                self.peft_model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except Exception as exc:  # PEFT raises anything from KeyError to RuntimeError on bad files
            raise AdapterError(str(path), f"PEFT could not load it: {exc}", persona_id=persona_id) from exc

    def _unload_lora(self, name: str) -> None:
        # Called after its replacement is loaded, so the PeftModel always keeps at least one adapter.
        # A row built just before the swap names the deleted LoRA and fails that one generation.
        with warnings.catch_warnings():  # "Adapter X was active which is now deleted": expected here
            warnings.filterwarnings("ignore", message=".*was active which is now deleted", category=UserWarning)
            self.peft_model.delete_adapter(name)
        remaining = list(self.peft_model.peft_config)
        if self.peft_model.active_adapter not in remaining:
            # PEFT keeps pointing at the deleted adapter; its config lookups would raise KeyError.
            self.peft_model.set_adapter(remaining[-1])
