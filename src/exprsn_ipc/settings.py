"""The one settings object, read from the environment and ``.env``.

Build it once at the edge (``Settings.load()``, the CLI, or your app's start-up)
and pass it down; library code never reads the environment itself.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from exprsn_ipc.errors import ConfigError
from exprsn_ipc.logsafe import get_logger
from exprsn_ipc.net import is_loopback

__all__ = ["MIN_KEY_BYTES", "Settings", "load_or_create_key_file"]

log = get_logger(__name__)

#: A broker key shorter than this is refused outside development (HS256 wants ≥ 256 bits).
MIN_KEY_BYTES = 32

TransportName = Literal["bridge", "redis", "memory"]

#: Variables whose values are never echoed in an error.
_SECRETS = frozenset({"IPC_BROKER_KEY", "REDIS_PASSWORD", "IPC_OPERATOR_TOKEN"})


class Settings(BaseSettings):
    """Every variable of the migration guide, plus the ones exprsn-ipc adds.

    Field names are the environment variable names in lower case
    (``IPC_RATE_MAX`` → ``ipc_rate_max``). ``docs/configuration.md`` lists them all.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    # Environment ------------------------------------------------------------
    node_env: str | None = None
    log_level: str = "INFO"

    # TLS ----------------------------------------------------------------------
    tls_enabled: bool = True
    certs_dir: Path = Path("certs")

    # Broker tokens ------------------------------------------------------------
    ipc_broker_key: SecretStr | None = None
    ipc_key_file: Path = Path(".exprsn-ipc/broker.key")
    ipc_token_ttl: int = Field(300, gt=0)
    ipc_bypass_auth: bool = True

    # Rate limits --------------------------------------------------------------
    ipc_rate_limit: bool = True
    ipc_rate_window: int = Field(60_000, gt=0)
    ipc_rate_max: int = Field(1000, gt=0)

    # Development bypass -------------------------------------------------------
    dev_bypass: bool = False

    # The Bridge's built-in CRUD store -------------------------------------------
    ipc_store: Literal["auto", "memory", "sqlite", "redis"] = "auto"
    ipc_store_path: Path = Path(".exprsn-ipc/store.sqlite3")

    # Redis --------------------------------------------------------------------
    redis_url: str | None = None
    redis_host: str = "localhost"
    redis_port: int = Field(6379, gt=0, lt=65536)
    redis_password: SecretStr | None = None
    redis_username: str | None = None
    redis_db: int = Field(0, ge=0)
    #: ``host:port,...`` of the sentinels; the master is ``redis_sentinel_master``.
    redis_sentinels: str | None = None
    redis_sentinel_master: str | None = None
    #: ``host:port,...`` of some Redis Cluster nodes (seeds).
    redis_cluster_nodes: str | None = None
    #: Replicas that must have a durable message before the emit returns (Redis ``WAIT``).
    ipc_durable_replicas: int = Field(0, ge=0)
    ipc_durable_replica_wait_ms: int = Field(1000, gt=0)
    #: SSUBSCRIBE/SPUBLISH (Redis 7) for the per-replica channels ``ipc:<instance>`` only
    #: Python workers use; service and broadcast channels stay classic for the Node workers.
    ipc_sharded_pubsub: bool = False

    # Bridge -------------------------------------------------------------------
    bridge_url: str = "https://localhost:3010"
    bridge_host: str = "127.0.0.1"
    bridge_port: int = Field(3010, gt=0, lt=65536)
    bridge_http_port: int | None = Field(None, gt=0, lt=65536)
    cors_origin: str | None = None
    ipc_allowed_services: str | None = None
    #: Serve the detail of /api/ipc/stats, /metrics and /dashboard to anyone, also in production.
    ipc_public_stats: bool = False
    #: The operator credential for those endpoints (a bearer secret, ≥ 32 bytes).
    ipc_operator_token: SecretStr | None = None
    #: The access policy file (TOML); unset: everything allowed (a warning in production).
    ipc_policy: Path | None = None
    #: Services the shared broker key may still speak for: ``*`` (every service without a
    #: credential of its own), ``none``, or a comma list; unset: the policy's ``shared_key``, else ``*``.
    ipc_shared_key_services: str | None = None
    #: Seconds between the Bridge's checks of the credentials' revocation list.
    ipc_credential_recheck: float = Field(2.0, gt=0)

    # Worker -------------------------------------------------------------------
    ipc_transport: TransportName = "bridge"
    ipc_max_message_bytes: int = Field(1_048_576, gt=0)
    ipc_max_concurrency: int = Field(64, gt=0)
    ipc_request_timeout: float = Field(5.0, gt=0)
    ipc_drain_timeout: float = Field(10.0, ge=0)
    #: Seconds a leaving replica may keep receiving calls already on their way to it.
    ipc_leave_grace: float = Field(2.0, ge=0)
    #: Seconds a worker-lane websocket may stay open without joining a namespace.
    ipc_handshake_timeout: float = Field(10.0, gt=0)
    ipc_emit_buffer: int = Field(1000, ge=0)
    #: Bytes the Bridge may hold for one socket that does not keep up before it closes it.
    ipc_socket_buffer_bytes: int = Field(16 * 1024 * 1024, gt=0)
    ipc_tls_verify: bool = True
    #: This service's credential key (``exprsn-ipc certs issue``); unset:
    #: ``CERTS_DIR/credentials/<service>.key`` when that file exists.
    ipc_credential: Path | None = None

    @field_validator(
        "node_env",
        "redis_url",
        "redis_username",
        "redis_sentinels",
        "redis_sentinel_master",
        "redis_cluster_nodes",
        "cors_origin",
        "ipc_allowed_services",
        "ipc_shared_key_services",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator(
        "ipc_broker_key", "redis_password", "ipc_operator_token", "ipc_policy", "ipc_credential", mode="before"
    )
    @classmethod
    def _empty_secret_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value:
            return None
        return value

    @model_validator(mode="after")
    def _one_redis_topology(self) -> Settings:
        if self.redis_sentinels and self.redis_cluster_nodes:
            raise ValueError("set REDIS_SENTINELS or REDIS_CLUSTER_NODES, not both")
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER (the master's name in Sentinel)")
        if self.redis_cluster_nodes and self.ipc_durable_replicas:
            raise ValueError("IPC_DURABLE_REPLICAS is supported on one server or Sentinel, not on a Cluster")
        return self

    @model_validator(mode="after")
    def _budgets_hold_a_message(self) -> Settings:
        if self.ipc_operator_token is not None and len(self.ipc_operator_token.get_secret_value()) < MIN_KEY_BYTES:
            raise ValueError(f"IPC_OPERATOR_TOKEN must be at least {MIN_KEY_BYTES} characters")
        if self.ipc_socket_buffer_bytes < self.ipc_max_message_bytes:
            raise ValueError(
                "IPC_SOCKET_BUFFER_BYTES must be at least IPC_MAX_MESSAGE_BYTES "
                f"({self.ipc_socket_buffer_bytes} < {self.ipc_max_message_bytes})"
            )
        return self

    # Derived ------------------------------------------------------------------
    @property
    def environment(self) -> str:
        """``NODE_ENV``, or ``development`` when unset (Express' rule).

        Only conveniences follow this (a generated, persisted broker key). The
        development bypass needs ``NODE_ENV=development`` spelled out:
        see :attr:`bypass_enabled`.
        """
        return self.node_env if self.node_env is not None else "development"

    @property
    def is_development(self) -> bool:
        return self.environment == "development"

    @property
    def is_production(self) -> bool:
        return self.node_env == "production"

    @property
    def bypass_requested(self) -> bool:
        return self.dev_bypass

    @property
    def bypass_enabled(self) -> bool:
        """True only with ``NODE_ENV=development`` exactly and ``DEV_BYPASS=true``.

        The caller must still check that the peer is on loopback.
        """
        return self.node_env == "development" and self.dev_bypass

    @property
    def auth_bypass_claim(self) -> bool:
        """The original's ``authBypass`` token claim (informational only)."""
        return self.node_env != "production" and self.ipc_bypass_auth

    @property
    def broker_key_bytes(self) -> bytes:
        if self.ipc_broker_key is None:
            raise ConfigError("IPC_BROKER_KEY is not set: run `exprsn-ipc init` to write one to .env")
        return self.ipc_broker_key.get_secret_value().encode("utf-8")

    @property
    def effective_redis_url(self) -> str:
        """The URL every Redis connection starts from.

        ``REDIS_URL``, or one built from ``REDIS_HOST/PORT/DB``; with ``REDIS_SENTINELS``
        a ``redis+sentinel://`` URL (the master's name and db in the path), with
        ``REDIS_CLUSTER_NODES`` a ``redis+cluster://`` one, both keeping ``REDIS_URL``'s
        TLS scheme and options. ``REDIS_USERNAME``/``REDIS_PASSWORD`` go in when the
        URL names no user or password of its own.
        """
        from urllib.parse import quote, urlsplit, urlunsplit

        base = self.redis_url or f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"
        parts = urlsplit(base)
        userinfo, at, hosts = parts.netloc.rpartition("@")
        if not at and (self.redis_username or self.redis_password is not None):
            userinfo = quote(self.redis_username or "", safe="")
            if self.redis_password is not None:
                userinfo += ":" + quote(self.redis_password.get_secret_value(), safe="")
        tls = parts.scheme == "rediss"
        path = parts.path
        if self.redis_sentinels:
            scheme, hosts = ("rediss" if tls else "redis") + "+sentinel", self.redis_sentinels.replace(" ", "")
            db = parts.path.strip("/") or "0"
            path = f"/{quote(self.redis_sentinel_master or '', safe='')}/{db}"
        elif self.redis_cluster_nodes:
            scheme, hosts, path = (
                ("rediss" if tls else "redis") + "+cluster",
                self.redis_cluster_nodes.replace(" ", ""),
                "",
            )
        else:
            scheme = parts.scheme
        netloc = f"{userinfo}@{hosts}" if userinfo else hosts
        return urlunsplit((scheme, netloc, path, parts.query, parts.fragment))

    @property
    def redis_configured(self) -> bool:
        """Redis is used by the Bridge when ``REDIS_URL``, ``REDIS_SENTINELS`` or ``REDIS_CLUSTER_NODES`` is set."""
        return self.redis_url is not None or bool(self.redis_sentinels) or bool(self.redis_cluster_nodes)

    @property
    def allowed_services(self) -> frozenset[str] | None:
        if self.ipc_allowed_services is None:
            return None
        return frozenset(s.strip() for s in self.ipc_allowed_services.split(",") if s.strip())

    @property
    def bridge_loopback_only(self) -> bool:
        """The Bridge binds a loopback address only (``BRIDGE_HOST``), so only this machine reaches it."""
        return self.bridge_host == "localhost" or is_loopback(self.bridge_host)

    @property
    def cors_origins(self) -> list[str]:
        if self.cors_origin is None:
            return []
        return [o.strip() for o in self.cors_origin.split(",") if o.strip()]

    # Construction -------------------------------------------------------------
    @classmethod
    def load(cls, *, env_file: str | Path | None = ".env", create_key: bool = True, **overrides: Any) -> Settings:
        """Read the environment (and ``env_file``), validate, and resolve the broker key.

        With ``create_key=False`` a missing development key is read from
        ``IPC_KEY_FILE`` if it exists and otherwise left unset: nothing is written.

        Raises:
            ConfigError: a variable has a bad value (the message names it), or the
                broker key is missing or too short outside development.
        """
        try:
            settings = cls(_env_file=env_file, **overrides)
        except ValidationError as exc:
            raise ConfigError(_describe_validation_error(exc)) from None
        return settings.with_resolved_key(create=create_key)

    def with_resolved_key(self, *, create: bool = True) -> Settings:
        """Return settings whose broker key is usable, generating one in development.

        With ``create=False`` (commands that only read) a missing key is not an
        error here: it is read from the development key file if there is one,
        and otherwise left unset for the command to report when it needs it.
        """
        if not self.ipc_tls_verify and not self.is_development:
            raise ConfigError("IPC_TLS_VERIFY=false is allowed only with NODE_ENV=development")
        key = self.ipc_broker_key
        if key is None:
            if not create:
                existing = _read_key_file(self.ipc_key_file) if self.is_development else None
                return self if existing is None else self.model_copy(update={"ipc_broker_key": SecretStr(existing)})
            if not self.is_development:
                raise ConfigError(
                    f"IPC_BROKER_KEY is required when NODE_ENV={self.environment}: "
                    "run `exprsn-ipc init` or set a key of at least 32 bytes"
                )
            generated = load_or_create_key_file(self.ipc_key_file)
            return self.model_copy(update={"ipc_broker_key": SecretStr(generated)})
        if len(key.get_secret_value().encode("utf-8")) < MIN_KEY_BYTES:
            if not self.is_development:
                raise ConfigError(
                    f"IPC_BROKER_KEY is shorter than {MIN_KEY_BYTES} bytes; "
                    "run `exprsn-ipc init --force` to generate a strong one"
                )
            log.warning("IPC_BROKER_KEY is shorter than %d bytes (allowed in development only)", MIN_KEY_BYTES)
        return self


def _read_key_file(path: Path) -> str | None:
    try:
        text = path.read_text("utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text or None


def load_or_create_key_file(path: Path) -> str:
    """Return the development key stored at ``path``, creating it exactly once.

    Several processes may start together; ``O_EXCL`` makes one of them the
    creator and the others read its key, so all share one key.
    """
    text = _read_key_file(path)
    if text:
        return text
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    try:
        # link() fails if another process won the race; then use its key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    text = path.read_text("utf-8").strip()
    if text == key:
        log.warning("generated a development broker key in %s (run `exprsn-ipc init` for a .env)", path)
    return text


def _describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]).upper()
        value = err.get("input")
        # A check across fields gets every input, secrets included: show no value then.
        shown = (
            ""
            if not name or name in {"IPC_BROKER_KEY", "REDIS_PASSWORD", "IPC_OPERATOR_TOKEN"}
            else f" (got {value!r})"
        )
        name = name or "settings"
        parts.append(f"{name}: {err['msg']}{shown}")
    return "invalid configuration: " + "; ".join(parts)
