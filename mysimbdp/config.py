"""Platform settings: environment variables ``MYSIMBDP_*`` over ``<config>/mysimbdp.toml`` over defaults.

Built once by the CLI and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from mysimbdp.errors import ConfigError

__all__ = ["Settings", "BatchSettings", "StreamSettings", "RunnerSettings", "HttpSettings", "load_settings"]

ENV_PREFIX = "MYSIMBDP_"


class BatchSettings(BaseModel):
    """Platform-wide limits of batch ingestion (per-tenant limits live in tenant profiles)."""

    model_config = ConfigDict(allow_inf_nan=False)

    max_concurrent_files: int = Field(4, ge=1, description="files loading at once, all tenants")
    write_batch_size: int = Field(1000, ge=1, le=100_000, description="documents per insert command")
    stable_after_s: float = Field(1.0, ge=0, le=3600, description="a file counts as complete when its size has not changed for this long")
    rescan_interval_s: float = Field(5.0, gt=0, le=3600, description="periodic rescan of staging folders, besides file events")
    progress_interval_s: float = Field(10.0, gt=0, le=3600, description="a loading file logs batch.file.progress at most this often")
    write_retry_deadline_s: float = Field(
        300.0, gt=0, le=86_400, description="how long a file's write is retried while the store is unreachable; "
        "then the file is deferred (it stays loading and resumes at a later scan)")
    try_max_bytes: int = Field(64 * 1024 * 1024, ge=1, description="largest body of a dry-run (POST "
                               "/tenants/{id}/try); the tenant's max_file_bytes bounds it too")
    try_timeout_s: float = Field(120.0, gt=0, le=3600, description="longest dry-run (the route's timeout_s bounds "
                                 "it too); past it the app's worker is stopped and the answer says so")
    max_concurrent_tries: int = Field(2, ge=1, le=64, description="dry-runs at once, all tenants (one per tenant)")


class StreamSettings(BaseModel):
    """Platform-wide settings of stream ingestion."""

    exchange: str = "mysimbdp.ingest"
    management_url: str = Field(
        "http://guest:guest@127.0.0.1:15672",
        description="RabbitMQ management API, used to provision tenant users and read queue depths",
    )
    provision_users: bool = Field(
        True, description="create each stream tenant's broker user (no password) and its permissions on onboarding")
    user_prefix: str = Field(
        "mysimbdp-", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$",
        description="broker users are named <user_prefix><tenant>; give each installation on a shared broker its "
        "own (the default is the name users had before it could be set)")


class HttpSettings(BaseModel):
    """Limits of the HTTP endpoint: slow clients, open connections and reports per tenant."""

    model_config = ConfigDict(allow_inf_nan=False)

    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a connection that has not sent a whole request line and headers this "
        "long after it opened (or after its previous answer, when kept alive) is closed")
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a request whose body stalls (no byte from the client) this long is "
        "closed")
    max_connections: int = Field(
        256, ge=8, le=65536, description="open connections at most; a new one beyond it closes the longest-idle "
        "connection, or is closed at once when every connection is busy")
    reports_per_s: float = Field(
        20.0, gt=0, le=10_000, description="POST /reports accepted per tenant per second (token bucket); more is "
        "answered 429")
    reports_burst: int = Field(100, ge=1, le=100_000, description="reports a tenant may send at once above the rate")


class RunnerSettings(BaseModel):
    """Limits of the worker processes that run tenant apps (``runner = "process"``)."""

    memory_mb: int = Field(2048, ge=64, le=1024 * 1024, description="address space of one worker (RLIMIT_AS)")
    cpu_s: int = Field(3600, ge=10, description="CPU seconds one worker may use before it is replaced (RLIMIT_CPU)")
    open_files: int = Field(64, ge=16, le=65536, description="open files of one worker (RLIMIT_NOFILE)")
    max_frame_mb: int = Field(64, ge=1, le=4096, description="largest answer a worker may send in one message")
    start_timeout_s: float = Field(60.0, gt=0, le=3600, description="a worker that is not ready by then is killed")
    idle_workers: int = Field(2, ge=0, le=64, description="idle workers kept per tenant app for the next job")
    require_confinement: bool = Field(
        True, description="refuse to start a worker where the kernel offers no confinement (Landlock, or a "
        "network namespace); false runs it with resource limits and a clean environment only")


class ClusterSettings(BaseModel):
    """``[cluster]``: how instances of the daemon sharing one store and one broker coordinate."""

    model_config = ConfigDict(allow_inf_nan=False)
    lease_s: float = Field(30.0, ge=1, le=3600, description=(
        "how long a claim on a file, a scaling decision or an instance's heartbeat holds without renewal; "
        "another instance takes over after it (the clocks of the instances must agree to well within it)"))
    heartbeat_s: float = Field(5.0, gt=0, le=600, description=(
        "how often an instance renews its heartbeat and its claims (at most a third of lease_s is used)"))

    @property
    def renew_every_s(self) -> float:
        """How often leases are renewed: the heartbeat, at most a third of the lease."""
        return min(self.heartbeat_s, self.lease_s / 3)


class Settings(BaseSettings):
    """Root settings of the daemon and the CLI."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        allow_inf_nan=False,
    )

    config_dir: Path = Path("config")
    staging_dir: Path = Path("staging")
    var_dir: Path = Path("var")
    instance_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="this daemon's name among the instances sharing the store (default: host name + a suffix kept in <var>/instance-id)")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    mongo_uri: str | None = None
    store_port: int = Field(27027, ge=0, le=65535, description=(
        "the embedded store's port when mongo_uri is unset (0: any free port); not 27017, so that "
        "it never clashes with a MongoDB on the same machine; its URI is written to <var>/store/uri"))
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    log_backups: int = Field(5, ge=0)
    admin_token: str | None = None
    metrics_token: str | None = Field(
        None, description="when set, GET /metrics needs it (or the admin token) as a bearer token")
    drain_timeout_s: float = Field(10.0, ge=0, le=3600)
    extra_apps: dict[str, str] = Field(
        default_factory=dict,
        description="apps loaded from importable modules, name -> module, besides installed entry points")
    retry_max_s: float = Field(30.0, gt=0, le=3600, description="longest wait between reconnection attempts")
    batch: BatchSettings = Field(default_factory=BatchSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("mongo_uri", "admin_token", "metrics_token", "instance_id", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    @field_validator("mongo_uri")
    @classmethod
    def _mongo_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _toml_path.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None and toml_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def tenants_dir(self) -> Path:
        """Where tenant profiles (``<id>.toml``) live."""
        return self.config_dir / "tenants"

    @property
    def log_file(self) -> Path:
        """The JSON log file (rotated beside itself)."""
        return self.var_dir / "log" / "mysimbdp.jsonl"

    @property
    def archive_dir(self) -> Path:
        """Where committed and rejected files are moved."""
        return self.var_dir / "archive"


class _TomlPath:
    """Carries the TOML path into ``settings_customise_sources`` (a classmethod without arguments)."""

    value: Path | None = None

    def get(self) -> Path | None:
        return self.value


_toml_path = _TomlPath()


def load_settings(config_dir: str | Path | None = None, **overrides: object) -> Settings:
    """Build the settings once: overrides, then ``MYSIMBDP_*``, then ``<config_dir>/mysimbdp.toml``.

    Raises :class:`ConfigError` naming the first invalid setting.
    """
    if config_dir is None:
        config_dir = os.environ.get(f"{ENV_PREFIX}CONFIG_DIR", "config")
    config_dir = Path(config_dir)
    _toml_path.value = config_dir / "mysimbdp.toml"
    try:
        return Settings(config_dir=config_dir, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _config_error(exc) from None
    except SettingsError as exc:  # e.g. MYSIMBDP_BATCH='{' (nested sections are JSON)
        raise _source_error(exc, config_dir / "mysimbdp.toml") from None
    except ValueError as exc:  # e.g. a TOML syntax error
        raise ConfigError(str(config_dir / "mysimbdp.toml"), str(exc)) from None
    finally:
        _toml_path.value = None


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    name = ENV_PREFIX + "__".join(loc).upper()
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
    return ConfigError(name, f"{err['msg']}{shown}")


def _source_error(exc: SettingsError, toml_path: Path) -> ConfigError:
    """Name the variable (or the file) a value could not be parsed from."""
    match = re.search(r'field "(\w+)" from source "(\w+)"', str(exc))
    if match is None:
        return ConfigError(str(toml_path), str(exc))
    field, source = match.groups()
    if source.startswith("Env"):
        return ConfigError(ENV_PREFIX + field.upper(), "not valid JSON (a section or a mapping is given as a "
                                                       "JSON object, e.g. '{\"max_concurrent_files\": 8}')")
    return ConfigError(f"{toml_path}: {field}", str(exc))
