"""The two trainable adapter kinds, as PEFT models around a freshly loaded base model.

Both mutate/wrap the model they are given: train on a model of your own, never on the one a
LocalRuntime is serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.models.local_loader import LoadedModel


@dataclass(frozen=True)
class SoftPromptOptions:
    virtual_tokens: int = 16
    #: Initialise from this text's token embeddings (e.g. the persona's hard prompt); None: random.
    init_text: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"virtual_tokens": self.virtual_tokens, "init": "text" if self.init_text else "random"}


@dataclass(frozen=True)
class LoraOptions:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = field(default=("q_proj", "v_proj"))

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}


def soft_prompt_model(loaded: LoadedModel, options: SoftPromptOptions) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=options.virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if options.init_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=options.init_text,
        # TEXT init tokenizes the text with the tokenizer at this (local) path: no hub access.
        tokenizer_name_or_path=str(loaded.source) if options.init_text else None,
    )
    model = get_peft_model(loaded.model, config)
    _portable_names(model, loaded)
    return model


def lora_model(loaded: LoadedModel, options: LoraOptions) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.targets),
    )
    model = get_peft_model(loaded.model, config)
    _portable_names(model, loaded)
    return model


def _portable_names(model: Any, loaded: LoadedModel) -> None:
    # PEFT records the base model's directory, here a machine-specific cache path; record the model's
    # name instead, which the serving side compares loosely (see bot.adapters.spec).
    config = model.peft_config["default"]
    config.base_model_name_or_path = loaded.name
    if getattr(config, "tokenizer_name_or_path", None):
        config.tokenizer_name_or_path = loaded.name
