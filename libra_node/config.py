"""One typed settings object for the whole node.

Values come from, in increasing priority: the defaults below, one TOML file
(``--config FILE`` or the file named by ``LIBRA_CONFIG``), and environment
variables ``LIBRA_<SECTION>__<KEY>`` (for example ``LIBRA_LISTENER__PORT``).
Every default is safe and local: loopback only, the embedded broker, a SQLite
ledger under the state folder, and no model unless one is configured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV_VAR = "LIBRA_CONFIG"
ENV_PREFIX = "LIBRA_"


def default_state_dir() -> Path:
    """Where the node keeps spool, ledger and outbox unless told otherwise."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "libra-node"


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


StrList = Annotated[list[str], NoDecode]


class Section(BaseModel):
    # Unknown keys are typos; refusing them beats silently ignoring them.
    model_config = ConfigDict(extra="forbid")


class NodeSettings(Section):
    state_dir: Path = Field(default_factory=default_state_dir)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"


class ListenerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    ae_title: str = Field("LIBRA", min_length=1, max_length=16)
    allowed_callers: StrList = []
    allowed_hosts: StrList = []
    # Empty means <state_dir>/spool.
    spool_dir: Path | None = None
    min_free_bytes: int = Field(1 << 30, ge=0)
    quiet_seconds: float = Field(2.0, gt=0)
    stable_seconds: float = Field(30.0, gt=0)
    max_associations: int = Field(16, ge=1)
    # Seconds without network traffic before an association is aborted.
    network_timeout: float = Field(60.0, gt=0)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    _split = field_validator("allowed_callers", "allowed_hosts", mode="before")(
        classmethod(lambda cls, v: _split_list(v))
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> "ListenerSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key as well")
        if self.stable_seconds < self.quiet_seconds:
            raise ValueError("stable_seconds must not be shorter than quiet_seconds")
        return self


class LedgerSettings(Section):
    # Empty means sqlite:///<state_dir>/ledger.sqlite3.
    url: str = ""


class PacsSettings(Section):
    transport: Literal["none", "dimse", "dicomweb", "orthanc"] = "none"
    host: str = "127.0.0.1"
    port: int = Field(4242, ge=1, le=65535)
    ae_title: str = Field("ORTHANC", min_length=1, max_length=16)
    # The AE title the node presents to the PACS; empty means listener.ae_title.
    calling_ae_title: str = ""
    retrieve: Literal["get", "move"] = "get"
    url: str = ""
    username: str = ""
    password: str = ""
    token: str = ""
    verify_tls: bool = True
    ca_bundle: Path | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    # How long an undelivered SR is retried before the study is FAILED.
    delivery_deadline_seconds: float = Field(24 * 3600.0, gt=0)


class BrokerSettings(Section):
    # Empty: the embedded broker under <state_dir>/broker, no server needed.
    url: str = ""
    result_backend: str = ""
    # Re-queue a study stuck in an intermediate state longer than this.
    stuck_after_seconds: float = Field(300.0, gt=0)
    reconcile_every_seconds: float = Field(30.0, gt=0)
    # Should `serve` run io and gpu workers as its own child processes?
    # Empty: only with the embedded broker (one process tree, no server).
    spawn_workers: bool | None = None


class ModelSettings(Section):
    # Folder of a Libra checkpoint; empty means no model configured.
    path: Path | None = None
    # Folder of RAD-DINO; empty means <path>/rad-dino.
    vision_path: Path | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    preset: Literal["clinical", "paper", "sample"] = "clinical"
    max_batch: int = Field(4, ge=1)
    batch_wait_seconds: float = Field(0.05, ge=0)
    max_new_tokens: int | None = Field(None, ge=1)
    pad_color: Literal["black", "mean"] = "black"


class ReportSettings(Section):
    sop_class: Literal["enhanced", "comprehensive"] = "enhanced"
    series_description: str = Field("AI DRAFT - NOT VERIFIED", max_length=64)
    pdf: bool = False
    # Empty means <state_dir>/reports.
    output_dir: Path | None = None
    institution_name: str = ""
    manufacturer: str = "libra-node"


class MetricsSettings(Section):
    host: str = "127.0.0.1"
    # 0 disables the metrics endpoint.
    port: int = Field(9464, ge=0, le=65535)


class Settings(BaseSettings):
    """Everything configurable about the node, one section per concern."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    node: NodeSettings = Field(default_factory=NodeSettings)
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    pacs: PacsSettings = Field(default_factory=PacsSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    # Set on a throw-away subclass by load_settings(); pydantic-settings reads
    # sources at class level, so the file cannot be an instance argument.
    toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))
        return tuple(sources)

    # Derived locations: one place decides where each thing lives.
    @property
    def spool_dir(self) -> Path:
        return self.listener.spool_dir or self.node.state_dir / "spool"

    @property
    def ledger_url(self) -> str:
        return self.ledger.url or f"sqlite:///{self.node.state_dir / 'ledger.sqlite3'}"

    @property
    def report_dir(self) -> Path:
        return self.report.output_dir or self.node.state_dir / "reports"

    @property
    def broker_dir(self) -> Path:
        return self.node.state_dir / "broker"

    @property
    def spawns_workers(self) -> bool:
        if self.broker.spawn_workers is not None:
            return self.broker.spawn_workers
        return not self.broker.url

    @property
    def vision_path(self) -> Path | None:
        if self.model.vision_path is not None:
            return self.model.vision_path
        return self.model.path / "rad-dino" if self.model.path else None

    @property
    def pacs_calling_ae_title(self) -> str:
        return self.pacs.calling_ae_title or self.listener.ae_title


class ConfigError(ValueError):
    """The configuration cannot be used; the message says why in plain words."""


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from file, environment and explicit overrides."""
    path = config_file or os.environ.get(CONFIG_ENV_VAR) or None
    toml_path = Path(path) if path else None
    if toml_path is not None and not toml_path.is_file():
        raise ConfigError(f"configuration file {toml_path} does not exist")

    class _FileSettings(Settings):
        toml_file = toml_path

    try:
        loaded = _FileSettings(**overrides)
    except Exception as exc:  # pydantic's ValidationError, TOML errors
        raise ConfigError(describe_config_error(exc, toml_path)) from exc
    return Settings.model_validate(loaded.model_dump())


def describe_config_error(exc: Exception, toml_path: Path | None) -> str:
    """Turn a validation error into one line per problem, naming the key."""
    where = f" in {toml_path}" if toml_path else ""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return f"cannot read configuration{where}: {exc}"
    lines = [f"invalid configuration{where}:"]
    for error in errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        env = ENV_PREFIX + "__".join(str(p).upper() for p in error["loc"])
        lines.append(f"  {key} (env {env}): {error['msg']}")
    return "\n".join(lines)
