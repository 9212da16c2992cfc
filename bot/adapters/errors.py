"""The adapter error: one clear line naming the persona and the adapter directory."""

from __future__ import annotations

from bot.errors import ModelLoadError


class AdapterError(ModelLoadError):
    """An adapter directory is missing, corrupt or does not fit the loaded base model."""

    def __init__(self, adapter: str, reason: str, *, persona_id: str | None = None) -> None:
        super().__init__(adapter, reason)
        self.adapter = adapter
        self.persona_id = persona_id
        who = f"persona {persona_id!r}: " if persona_id else ""
        # ModelLoadError words it as "cannot load model ..."; an adapter deserves its own sentence.
        self.args = (f"{who}adapter {adapter}: {reason}",)
