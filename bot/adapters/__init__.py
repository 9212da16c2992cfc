"""PEFT adapters (LoRA and soft prompts) served from one shared base model."""

from bot.adapters.bank import BASE, AdapterBank, LoadedAdapter
from bot.adapters.batch import Row, build_batch
from bot.adapters.errors import AdapterError
from bot.adapters.spec import AdapterSpec, BaseModelInfo, check_compatible, read_adapter

__all__ = [
    "BASE",
    "AdapterBank",
    "AdapterError",
    "AdapterSpec",
    "BaseModelInfo",
    "LoadedAdapter",
    "Row",
    "build_batch",
    "check_compatible",
    "read_adapter",
]
