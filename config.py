"""Settings of the Mira service node, read once at start-up.

Every variable of the contract's Configuration table is read here with
python-decouple: the process environment first, then a ``.env`` file in the
working directory (or the file named by ``ENV_FILE``). Values are typed and
checked; a bad one raises :class:`ConfigError` with a message that names the
variable, and ``server.py`` turns that into a non-zero exit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from decouple import Config, RepositoryEmpty, RepositoryEnv

ROOT = Path(__file__).resolve().parent
DEFAULT_MODELS_FILE = ROOT / "data" / "supported_models.json"

# provider name -> (base URL variable, default base URL, key variable)
PROVIDER_DEFAULTS: dict[str, tuple[str, str, str]] = {
    "openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "openrouter": ("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
    "groq": ("GROQ_BASE_URL", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mira": ("MIRA_BASE_URL", "http://localhost:11434/v1", "MIRA_API_KEY"),
    "ollama": ("OLLAMA_BASE_URL", "http://localhost:11434/v1", "OLLAMA_API_KEY"),
}
# Providers that need no key (a local server): always listed as configured.
KEYLESS_PROVIDERS = ("mira", "ollama")
# The router forgets a node this many seconds after its last heartbeat.
ROUTER_LIVENESS_TTL = 12.0

Network = IPv4Network | IPv6Network

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Every environment variable the node reads: tests, the benchmark and the demo clear or set these
# (and only these), so a developer's own settings never leak into a run.
ENV_VARIABLES: tuple[str, ...] = (
    "ENV_FILE", "PORT", "HOST", "VERSION", "WORKERS",
    "ROUTER_BASE_URL", "MACHINE_IP", "MACHINE_NAME", "ADMIN_API_TOKEN", "MACHINE_API_TOKEN",
    "LIVENESS_INTERVAL", "ROUTER_RETRY_BACKOFF", "SUPPORTED_MODELS_FILE", "SERVICE_API_KEY",
    "ALLOW_CUSTOM_PROVIDERS", "CUSTOM_PROVIDER_ALLOW_PRIVATE", "MAX_BODY_SIZE", "MAX_CONCURRENT_REQUESTS",
    "REQUEST_BODY_TIMEOUT", "UPSTREAM_CONNECT_TIMEOUT", "UPSTREAM_TIMEOUT", "UPSTREAM_RETRIES",
    "UPSTREAM_RETRY_BACKOFF", "UPSTREAM_MAX_CONNECTIONS", "UPSTREAM_QUEUE_TIMEOUT", "EVAL_CONCURRENCY",
    "EVAL_MAX_ROWS", "VERIFY_DEFAULT_MODEL", "SHUTDOWN_TIMEOUT", "CORS_ORIGINS", "LOG_LEVEL", "LOG_FORMAT",
    "OPENROUTER_IGNORED_PROVIDERS", "MODEL_FALLBACKS_FILE", "CIRCUIT_FAILURES", "CIRCUIT_COOLDOWN",
    "UPSTREAM_CA_BUNDLE", "STREAM_USAGE", "ALLOWED_CLIENTS", "TRUSTED_PROXIES", "DEFAULT_PROVIDER",
    "TRAFFIC_WEIGHT", "ROUTER_MODELS",
) + tuple(var for url_var, _, key_var in PROVIDER_DEFAULTS.values() for var in (url_var, key_var))


class ConfigError(ValueError):
    """A configuration variable has a value the node cannot run with."""


@dataclass(frozen=True)
class ProviderSettings:
    """Where one provider lives and the key it is called with (may be empty)."""

    name: str
    base_url: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    """All settings of one node process. Build it with :func:`load_settings`."""

    port: int = 8000
    host: str = "0.0.0.0"
    version: str = "0.0.0"
    workers: int = 1
    router_base_url: str = ""
    machine_ip: str = ""
    machine_name: str = ""
    admin_api_token: str = field(default="", repr=False)
    machine_api_token: str = field(default="", repr=False)
    liveness_interval: float = 3.0
    router_retry_backoff: float = 1.0
    supported_models_file: str = str(DEFAULT_MODELS_FILE)
    service_api_keys: tuple[str, ...] = field(default=(), repr=False)
    allowed_clients: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    default_provider: str = ""
    traffic_weight: float | None = None
    router_models: tuple[str, ...] = ()
    allow_custom_providers: bool = True
    max_body_size: int = 20971520
    max_concurrent_requests: int = 1000
    upstream_connect_timeout: float = 10.0
    upstream_timeout: float = 180.0
    upstream_retries: int = 2
    upstream_max_connections: int = 1000
    upstream_queue_timeout: float = 10.0
    retry_backoff: float = 0.25
    eval_concurrency: int = 8
    eval_max_rows: int = 10000
    verify_default_model: str = "mira/llama3.1"
    shutdown_timeout: float = 30.0
    request_body_timeout: float = 30.0
    custom_provider_allow_private: bool = False
    model_fallbacks_file: str = ""
    circuit_failures: int = 5
    circuit_cooldown: float = 30.0
    upstream_ca_bundle: str = ""
    stream_usage: str = "inject"
    cors_origins: tuple[str, ...] = ("*",)
    log_level: str = "INFO"
    log_format: str = "text"
    openrouter_ignored_providers: tuple[str, ...] = ()
    providers: dict[str, ProviderSettings] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        """Every configured secret value, for redaction of logs and messages."""
        values = [self.admin_api_token, self.machine_api_token, *self.service_api_keys]
        values += [p.api_key for p in self.providers.values()]
        return [v for v in values if v]


def _make_config(env_file: str | None) -> Config:
    path = env_file if env_file is not None else os.environ.get("ENV_FILE", ".env")
    if path and Path(path).is_file():
        return Config(RepositoryEnv(path))
    return Config(RepositoryEmpty())


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        value = int(raw.strip())
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"must be {bound}")
        return value

    return cast


def _float(lo: float, strict: bool = False) -> Callable[[str], float]:
    def cast(raw: str) -> float:
        value = float(raw.strip())
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        if value < lo or (strict and value == lo):
            raise ValueError(f"must be {'greater than' if strict else 'at least'} {lo:g}")
        return value

    return cast


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        value = raw.strip()
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise ValueError("must be one of " + ", ".join(choices))

    return cast


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _networks(raw: str) -> tuple[Network, ...]:
    """Comma-separated IPv4/IPv6 addresses and CIDR blocks (host bits allowed: ``10.0.0.5/8`` is ``10.0.0.0/8``)."""
    networks = []
    for entry in _csv(raw):
        try:
            networks.append(ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry[:60]!r} is not an IP address or CIDR block") from None
    return tuple(networks)


def _weight(raw: str) -> float:
    value = _float(0.0)(raw)
    if value > 1:
        raise ValueError("must be between 0 and 1")
    return value


def _text(raw: str) -> str:
    return raw.strip()


def _readable_file(raw: str) -> str:
    """A path to a file this process can read ('' stays unset)."""
    path = raw.strip()
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ValueError("must name a readable file (PEM CA certificates)")
    return path


def load_settings(env_file: str | None = None) -> Settings:
    """Read and validate every setting; raise :class:`ConfigError` on a bad value."""
    config = _make_config(env_file)

    def get(name: str, default: Any, cast: Callable[[str], Any] = _text) -> Any:
        raw = config.get(name, default=None)
        if raw is None:
            return default
        try:
            return cast(str(raw))
        except ValueError as exc:
            shown = str(raw) if len(str(raw)) <= 40 else str(raw)[:40] + "..."
            detail = str(exc) if not str(exc).startswith(("invalid literal", "could not")) else "is not a number"
            raise ConfigError(f"{name}={shown!r}: {detail}") from None

    def url_or_empty(raw: str) -> str:
        return _url(raw) if raw.strip() else ""

    providers = {}
    for name, (url_var, url_default, key_var) in PROVIDER_DEFAULTS.items():
        providers[name] = ProviderSettings(
            name=name,
            base_url=get(url_var, url_default, _url),
            api_key=get(key_var, ""),
        )

    workers = get("WORKERS", 1, _int(0))
    if workers == 0:
        workers = os.cpu_count() or 1

    router_base_url = get("ROUTER_BASE_URL", "", url_or_empty)
    if router_base_url and not (get("MACHINE_API_TOKEN", "") or get("ADMIN_API_TOKEN", "")):
        raise ConfigError(
            "ROUTER_BASE_URL is set but neither MACHINE_API_TOKEN nor ADMIN_API_TOKEN is: set MACHINE_API_TOKEN"
            " (heartbeats only) or ADMIN_API_TOKEN (register at start-up), or unset ROUTER_BASE_URL to run standalone"
        )

    liveness_interval = get("LIVENESS_INTERVAL", 3.0, _float(0.0, strict=True))
    if liveness_interval >= ROUTER_LIVENESS_TTL:
        raise ConfigError(
            f"LIVENESS_INTERVAL={liveness_interval:g}: must be below {ROUTER_LIVENESS_TTL:g} seconds (the router forgets"
            f" a node {ROUTER_LIVENESS_TTL:g} s after its last heartbeat); 3 is the default"
        )
    default_provider = get("DEFAULT_PROVIDER", "")
    if default_provider and default_provider not in providers:
        raise ConfigError(f"DEFAULT_PROVIDER={default_provider[:40]!r}: must be one of {', '.join(providers)}")

    return Settings(
        port=get("PORT", 8000, _int(0, 65535)),
        host=get("HOST", "0.0.0.0") or "0.0.0.0",
        version=get("VERSION", "0.0.0") or "0.0.0",
        workers=workers,
        router_base_url=router_base_url,
        machine_ip=get("MACHINE_IP", ""),
        machine_name=get("MACHINE_NAME", ""),
        admin_api_token=get("ADMIN_API_TOKEN", ""),
        machine_api_token=get("MACHINE_API_TOKEN", ""),
        liveness_interval=liveness_interval,
        router_retry_backoff=get("ROUTER_RETRY_BACKOFF", 1.0, _float(0.0)),
        supported_models_file=get("SUPPORTED_MODELS_FILE", str(DEFAULT_MODELS_FILE))
        or str(DEFAULT_MODELS_FILE),
        service_api_keys=get("SERVICE_API_KEY", (), _csv),
        allowed_clients=get("ALLOWED_CLIENTS", (), _networks),
        trusted_proxies=get("TRUSTED_PROXIES", (), _networks),
        default_provider=default_provider,
        traffic_weight=get("TRAFFIC_WEIGHT", None, lambda raw: _weight(raw) if raw.strip() else None),
        router_models=get("ROUTER_MODELS", (), _csv),
        allow_custom_providers=get("ALLOW_CUSTOM_PROVIDERS", True, _bool),
        max_body_size=get("MAX_BODY_SIZE", 20971520, _int(1)),
        max_concurrent_requests=get("MAX_CONCURRENT_REQUESTS", 1000, _int(1)),
        upstream_connect_timeout=get("UPSTREAM_CONNECT_TIMEOUT", 10.0, _float(0.0, strict=True)),
        upstream_timeout=get("UPSTREAM_TIMEOUT", 180.0, _float(0.0, strict=True)),
        upstream_retries=get("UPSTREAM_RETRIES", 2, _int(0, 10)),
        upstream_max_connections=get("UPSTREAM_MAX_CONNECTIONS", 1000, _int(1)),
        upstream_queue_timeout=get("UPSTREAM_QUEUE_TIMEOUT", 10.0, _float(0.0, strict=True)),
        retry_backoff=get("UPSTREAM_RETRY_BACKOFF", 0.25, _float(0.0)),
        eval_concurrency=get("EVAL_CONCURRENCY", 8, _int(1)),
        eval_max_rows=get("EVAL_MAX_ROWS", 10000, _int(1)),
        verify_default_model=get("VERIFY_DEFAULT_MODEL", "mira/llama3.1") or "mira/llama3.1",
        shutdown_timeout=get("SHUTDOWN_TIMEOUT", 30.0, _float(0.0)),
        request_body_timeout=get("REQUEST_BODY_TIMEOUT", 30.0, _float(0.0, strict=True)),
        custom_provider_allow_private=get("CUSTOM_PROVIDER_ALLOW_PRIVATE", False, _bool),
        model_fallbacks_file=get("MODEL_FALLBACKS_FILE", ""),
        circuit_failures=get("CIRCUIT_FAILURES", 5, _int(0)),
        circuit_cooldown=get("CIRCUIT_COOLDOWN", 30.0, _float(0.0, strict=True)),
        upstream_ca_bundle=get("UPSTREAM_CA_BUNDLE", "", _readable_file),
        stream_usage=get("STREAM_USAGE", "inject", _choice("inject", "observe")),
        cors_origins=get("CORS_ORIGINS", ("*",), _csv) or ("*",),
        log_level=get("LOG_LEVEL", "INFO", _choice(*LOG_LEVELS)),
        log_format=get("LOG_FORMAT", "text", _choice("text", "json")),
        openrouter_ignored_providers=get("OPENROUTER_IGNORED_PROVIDERS", (), _csv),
        providers=providers,
    )
