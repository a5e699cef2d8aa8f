"""Settings of the Mira service node, read once at start-up.

Every variable of the contract's Configuration table is read here with
python-decouple: the process environment first, then a ``.env`` file in the
working directory (or the file named by ``ENV_FILE``). Values are typed and
checked; a bad one raises :class:`ConfigError` with a message that names the
variable, and ``server.py`` turns that into a non-zero exit.

Each setting is named once, as a row of the settings table: the fields of
:class:`Settings` declared with :func:`setting` (the environment variable, the
default, the cast that checks a value, the meaning shown in README's
Configuration table; the attribute is the field's name), plus the rows of
``ENV_FILE`` and of the providers (:data:`PROVIDERS`). :data:`SETTINGS`
lists them all; :func:`load_settings`, :data:`ENV_VARIABLES`, ``tools/demo.py``
and the test that README's table agrees with it read that list. Adding a
setting is one ``name: type = setting(...)`` line in :class:`Settings` (and its
row in the README). The files SUPPORTED_MODELS_FILE, MODEL_FALLBACKS_FILE,
MODEL_ALIASES_FILE, PROVIDER_LIMITS_FILE and PRICES_FILE name are read and checked
here too, into ``supported_models``, ``model_fallbacks``, ``model_aliases``,
``provider_limits`` and ``prices``.

What ``python server.py --check-config`` prints is made here too:
:func:`setting_typos` (names in the ``.env`` file, or variables of the
environment, that look like a setting but are not one) and
:func:`effective_settings` (each setting's value, secrets masked, and where it
came from).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse, urlsplit, urlunsplit

import ujson
from decouple import Config, RepositoryEmpty, RepositoryEnv

from models.chat import Fallback, ProviderNames, fallback_of, split_model
from models.errors import ApiError
from utils.eventloop import EVENT_LOOPS
from utils.redact import Redactor

ROOT = Path(__file__).resolve().parent
DEFAULT_MODELS_FILE = ROOT / "data" / "supported_models.json"


@dataclass(frozen=True)
class ProviderRow:
    """One provider the node knows: its variables, its default base URL, and the dialect (family) it speaks.

    ``api`` names the provider family (``utils.upstream.providers``): ``openai`` for OpenAI's chat
    completions API, ``anthropic`` for Anthropic's Messages API. Adding a provider of an existing family is
    one row here (and its line in README's Providers table).
    """

    url_var: str
    url_default: str
    key_var: str
    api: str = "openai"
    keyless: bool = False  # a local server that needs no key: always configured


PROVIDERS: dict[str, ProviderRow] = {
    "openai": ProviderRow("OPENAI_BASE_URL", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "openrouter": ProviderRow("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "anthropic": ProviderRow("ANTHROPIC_BASE_URL", "https://api.anthropic.com/v1", "ANTHROPIC_API_KEY", api="anthropic"),
    "groq": ProviderRow("GROQ_BASE_URL", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mira": ProviderRow("MIRA_BASE_URL", "http://localhost:11434/v1", "MIRA_API_KEY", keyless=True),
    "ollama": ProviderRow("OLLAMA_BASE_URL", "http://localhost:11434/v1", "OLLAMA_API_KEY", keyless=True),
}
# The router forgets a node this many seconds after its last heartbeat.
ROUTER_LIVENESS_TTL = 12.0

Network = IPv4Network | IPv6Network

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

MASKED = "********"  # a secret, or the password of a URL, where a value is shown

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable has a value the node cannot run with."""


# -- casts: the text of a variable -> its value; a ValueError says what is wrong --------------------


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        value = int(raw.strip())
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"must be {bound}")
        return value

    return cast


def _float(lo: float, strict: bool = False, hi: float | None = None) -> Callable[[str], float]:
    def cast(raw: str) -> float:
        value = float(raw.strip())
        if not math.isfinite(value):  # nan, inf, 1e400: a delay no event loop can wait for (uvloop refuses NaN)
            raise ValueError("must be a finite number")
        if value < lo or (strict and value == lo):
            raise ValueError(f"must be {'greater than' if strict else 'at least'} {lo:g}")
        if hi is not None and value > hi:
            raise ValueError(f"must be at most {hi:.0f}")
        return value

    return cast


# The most seconds any setting may give: ~31.7 years. Anything the node derives from a number of seconds (twice
# the back-off, the milliseconds libcurl is handed, a deadline on the loop's clock) stays a finite number.
MAX_SECONDS = 1e9


def _seconds(strict: bool = False) -> Callable[[str], float]:
    """A number of seconds: finite, 0 or more (above 0 when ``strict``), at most :data:`MAX_SECONDS`."""
    return _float(0.0, strict, MAX_SECONDS)


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


def _url_or_empty(raw: str) -> str:
    return _url(raw) if raw.strip() else ""


def _redis_url(raw: str) -> str:
    """'' (unset), or a ``redis://`` / ``rediss://`` URL with a host; user, password and database may be in it."""
    value = raw.strip()
    if not value:
        return ""
    parsed = urlparse(value)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError("must be a redis:// or rediss:// URL with a host")
    try:
        parsed.port  # noqa: B018 (a port that is not a number raises here)
        database = parsed.path.strip("/")
        if database and not database.isdigit():
            raise ValueError
    except ValueError:
        raise ValueError("must be redis[s]://[[user]:password@]host[:port][/database]") from None
    return value


def redis_password(url: str) -> str:
    """The password of a REDIS_URL ('' when none): a secret."""
    return urlparse(url).password or "" if url else ""


def redis_address(url: str) -> str:
    """What logs say of a REDIS_URL: scheme, host, port and database, never the user or password."""
    parsed = urlparse(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.hostname}{port}{parsed.path or ''}"


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


def _weight(raw: str) -> float | None:
    """0 to 1 ('' stays unset)."""
    if not raw.strip():
        return None
    value = _float(0.0)(raw)
    if value > 1:
        raise ValueError("must be between 0 and 1")
    return value


def _workers(raw: str) -> int:
    """At least 0; 0 is one per CPU."""
    return _int(0)(raw) or os.cpu_count() or 1


def _text(raw: str) -> str:
    return raw.strip()


def _readable_file(raw: str) -> str:
    """A path to a file this process can read ('' stays unset)."""
    path = raw.strip()
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise ValueError("must name a readable file (PEM CA certificates)")
    return path


# -- the settings table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    env: str  # the environment variable
    default: Any  # the value when the variable is not set
    cast: Callable[[str], Any] = field(repr=False)  # its text -> its value; a ValueError says what is wrong
    doc: str = field(repr=False)  # its meaning, as README's Configuration table says it
    attr: str = ""  # the Settings attribute ("": none of its own: ENV_FILE, a provider's URL or key)
    blank_is_default: bool = False  # a value that casts to nothing ('', ',') means the default too
    shown: str = ""  # the default as README shows it, when that is not the value itself
    secret: bool = False  # its value (REDIS_URL: the password in it) is never shown

    def read(self, raw: str | None) -> Any:
        """The value of this variable for its text (None: not set); ValueError when the text is bad."""
        if raw is None:
            return self.default
        value = self.cast(raw)
        return value if value or not self.blank_is_default else self.default

    @property
    def shown_default(self) -> str:
        """The default as README's table writes it (without backquotes): ``unset`` when there is none."""
        if self.shown:
            return self.shown
        value = self.default
        if value is None or value == "" or value == ():
            return "unset"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, tuple):
            return ",".join(str(item) for item in value)
        return str(value)


_ROW = "setting"  # the key of a Settings field's row in its metadata


def setting(
    env: str, default: T, cast: Callable[[str], T], doc: str, *,
    blank_is_default: bool = False, shown: str = "", secret: bool = False,
) -> T:
    """A field of :class:`Settings` read from ``env``: one row of the settings table (see the module docstring)."""
    row = Setting(env, default, cast, doc, blank_is_default=blank_is_default, shown=shown, secret=secret)
    return field(default=default, repr=not secret, metadata={_ROW: row})


@dataclass(frozen=True)
class ProviderSettings:
    """Where one provider lives and the keys it is called with (none, one, or a pool taken in turn)."""

    name: str
    base_url: str
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api: str = "openai"  # the family it speaks (ProviderRow.api)

    @property
    def configured(self) -> bool:
        """Whether requests may go to it: it has a key, or needs none (a local server)."""
        return bool(self.api_keys) or PROVIDERS[self.name].keyless

    @property
    def api_key(self) -> str:
        """The first key ('' when there is none)."""
        return self.api_keys[0] if self.api_keys else ""


LIMIT_NAMES = ("rpm", "tpm", "tokens_per_day", "usd_per_day")
NODE_WIDE = "*"  # PROVIDER_LIMITS_FILE's key for the node's total across providers
NODE_LIMIT_NAMES = ("tokens_per_day", "usd_per_day")  # what the node-wide entry may set


@dataclass(frozen=True)
class ProviderLimits:
    """One provider's entry of PROVIDER_LIMITS_FILE (or the node-wide ``"*"``); None: no such limit."""

    rpm: int | None = None  # calls started in the last 60 s
    tpm: int | None = None  # prompt + completion tokens reported in the last 60 s
    tokens_per_day: int | None = None  # prompt + completion tokens since 00:00 UTC
    usd_per_day: float | None = None  # the cost (PRICES_FILE) of the calls since 00:00 UTC


PRICE_FIELDS = ("input", "output", "cache_read", "cache_write")


@dataclass(frozen=True)
class Price:
    """One model's entry of PRICES_FILE: USD per million tokens (the cache prices default to ``input``)."""

    input: float
    output: float
    cache_read: float
    cache_write: float


@dataclass(frozen=True)
class Settings:
    """All settings of one node process. Build it with :func:`load_settings`.

    Each field made with :func:`setting` is one variable; the others are what the loader derives.
    """

    port: int = setting("PORT", 8000, _int(0, 65535), "listen port (0: any free port, reported in the start-up line)")
    host: str = setting("HOST", "0.0.0.0", _text, "listen address", blank_is_default=True)
    version: str = setting("VERSION", "0.0.0", _text, "reported by /health", blank_is_default=True)
    workers: int = setting("WORKERS", 1, _workers, "processes sharing the port; 0 = one per CPU")
    event_loop: str = setting(
        "EVENT_LOOP", EVENT_LOOPS[0], _choice(*EVENT_LOOPS),
        "`uvloop`: every process runs on uvloop (8 % fewer instructions, about 7 % less CPU per proxied request);"
        " `asyncio`: on asyncio's standard loop. uvloop that cannot be imported: the standard loop, with one warning"
        " line; the loop in use is named in the start-up line and in `mira_build_info`",
    )
    router_base_url: str = setting(
        "ROUTER_BASE_URL", "", _url_or_empty,
        "the Mira router; set: register and/or send heartbeats ([Router integration](#router-integration)); unset:"
        " standalone",
    )
    machine_ip: str = setting(
        "MACHINE_IP", "", _text, "the address the router knows this node by; unset: the first non-loopback IPv4 address"
    )
    machine_name: str = setting(
        "MACHINE_NAME", "", _text, "the name to register with when the router has none for this machine"
    )
    admin_api_token: str = setting(
        "ADMIN_API_TOKEN", "", _text, "router admin token: register at start-up, then send heartbeats", secret=True
    )
    machine_api_token: str = setting(
        "MACHINE_API_TOKEN", "", _text, "router machine token: heartbeats only, no registration", secret=True
    )
    liveness_interval: float = setting(
        "LIVENESS_INTERVAL", 3.0, _seconds(strict=True),
        "seconds between heartbeats; 12 or more is refused (exit 2): the router forgets a node 12 s after its last"
        " heartbeat",
    )
    router_retry_backoff: float = setting(
        "ROUTER_RETRY_BACKOFF", 1.0, _seconds(), "first delay between registration attempts (doubles each time)"
    )
    supported_models_file: str = setting(
        "SUPPORTED_MODELS_FILE", str(DEFAULT_MODELS_FILE), _text, "JSON array of model ids for /v1/models",
        blank_is_default=True, shown="data/supported_models.json",
    )
    service_api_keys: tuple[str, ...] = setting(
        "SERVICE_API_KEY", (), _csv,
        "when set, /v1/* needs `Authorization: Bearer <key>`; several keys comma-separated, any one is accepted",
        secret=True,
    )
    allowed_clients: tuple[Network, ...] = setting(
        "ALLOWED_CLIENTS", (), _networks,
        "comma-separated IPs and CIDRs (IPv4, IPv6) allowed to call /v1/*; others get 403 `client_forbidden`; unset: any",
    )
    trusted_proxies: tuple[Network, ...] = setting(
        "TRUSTED_PROXIES", (), _networks,
        "CIDRs of reverse proxies whose `X-Forwarded-For` is believed ([Security](#security))",
    )
    default_provider: str = setting(
        "DEFAULT_PROVIDER", "", _text,
        "provider that takes, whole, a model whose first segment names no provider ([Providers](#providers))",
    )
    traffic_weight: float | None = setting(
        "TRAFFIC_WEIGHT", None, _weight, "sent at registration when set: 0 to 1, this node's share of the router's traffic"
    )
    router_models: tuple[str, ...] = setting(
        "ROUTER_MODELS", (), _csv,
        "sent at registration when set (`supported_models`): comma-separated router model names this node serves;"
        " unset: all",
    )
    allow_custom_providers: bool = setting(
        "ALLOW_CUSTOM_PROVIDERS", True, _bool, "accept a per-request `model_provider`"
    )
    max_body_size: int = setting("MAX_BODY_SIZE", 20971520, _int(1), "bytes; a larger request body gets 413")
    max_concurrent_requests: int = setting(
        "MAX_CONCURRENT_REQUESTS", 1000, _int(1), "/v1 requests in flight per process; beyond it 503 with `Retry-After: 1`"
    )
    upstream_connect_timeout: float = setting("UPSTREAM_CONNECT_TIMEOUT", 10.0, _seconds(strict=True), "seconds")
    upstream_timeout: float = setting(
        "UPSTREAM_TIMEOUT", 180.0, _seconds(strict=True),
        "seconds for a whole non-streaming call, and the longest silence inside a stream",
    )
    upstream_retries: int = setting(
        "UPSTREAM_RETRIES", 2, _int(0, 10), "retries of a connection failure or an upstream 429/502/503/504 (and Anthropic's 529)"
    )
    upstream_max_connections: int = setting(
        "UPSTREAM_MAX_CONNECTIONS", 1000, _int(1), "concurrent upstream transfers per process"
    )
    upstream_queue_timeout: float = setting(
        "UPSTREAM_QUEUE_TIMEOUT", 10.0, _seconds(strict=True),
        "seconds a request may wait for a free upstream connection before 503",
    )
    retry_backoff: float = setting(
        "UPSTREAM_RETRY_BACKOFF", 0.25, _seconds(),
        "first retry delay in seconds (doubles, with jitter; an upstream `Retry-After` wins, up to UPSTREAM_RETRY_MAX_WAIT)",
    )
    upstream_retry_max_wait: float = setting(
        "UPSTREAM_RETRY_MAX_WAIT", 5.0, _seconds(),
        "seconds; an upstream 429 or 503 whose `Retry-After` asks for longer is not retried: the request goes to its"
        " next fallback at once, or the upstream's status comes back with that `Retry-After`",
    )
    eval_concurrency: int = setting("EVAL_CONCURRENCY", 8, _int(1), "parallel model calls within one eval")
    eval_max_rows: int = setting("EVAL_MAX_ROWS", 10000, _int(1), "larger evals get 400")
    verify_default_model: str = setting(
        "VERIFY_DEFAULT_MODEL", "mira/llama3.1", _text, "model of /v1/verify when none is given", blank_is_default=True
    )
    shutdown_timeout: float = setting("SHUTDOWN_TIMEOUT", 30.0, _seconds(), "seconds to drain on SIGTERM")
    request_body_timeout: float = setting(
        "REQUEST_BODY_TIMEOUT", 30.0, _seconds(strict=True),
        "seconds a request body has to arrive in full after its headers; then 408 and the connection is closed",
    )
    custom_provider_allow_private: bool = setting(
        "CUSTOM_PROVIDER_ALLOW_PRIVATE", False, _bool,
        "let a per-request `model_provider.base_url` reach loopback, private, link-local and other internal addresses",
    )
    model_aliases_file: str = setting(
        "MODEL_ALIASES_FILE", "", _text,
        "JSON object `{name: \"PROVIDER/MODEL\"}`: a request's model (on every route) named NAME goes to that model"
        " ([Model aliases](#model-aliases)); checked at start-up (exit 2)",
    )
    model_fallbacks_file: str = setting(
        "MODEL_FALLBACKS_FILE", "", _text,
        "JSON object `{model id: [fallback model ids]}`, used when a request names no `fallbacks`",
    )
    circuit_failures: int = setting(
        "CIRCUIT_FAILURES", 5, _int(0), "consecutive failed attempts that open a provider's circuit; 0 turns circuits off"
    )
    circuit_cooldown: float = setting(
        "CIRCUIT_COOLDOWN", 30.0, _seconds(strict=True),
        "seconds an open circuit stays open before one probe request goes through",
    )
    upstream_ca_bundle: str = setting(
        "UPSTREAM_CA_BUNDLE", "", _readable_file,
        "PEM file of CA certificates that upstream (and router) certificates are verified against; unset: the system"
        " store. A missing or unreadable file stops start-up (exit 2) naming it",
    )
    stream_usage: str = setting(
        "STREAM_USAGE", "inject", _choice("inject", "observe"),
        "`inject`: a chat or completions stream whose client did not ask for usage is sent upstream with"
        " `stream_options.include_usage` and the usage-only event is taken out of what the client gets; `observe`:"
        " bodies and streams are never changed, usage is counted when the upstream sends it",
    )
    cors_origins: tuple[str, ...] = setting(
        "CORS_ORIGINS", ("*",), _csv, "comma-separated allowed origins", blank_is_default=True
    )
    log_level: str = setting("LOG_LEVEL", "INFO", _choice(*LOG_LEVELS), "DEBUG, INFO, WARNING, ERROR")
    log_format: str = setting("LOG_FORMAT", "text", _choice("text", "json"), "`json`: every line is one JSON object")
    openrouter_ignored_providers: tuple[str, ...] = setting(
        "OPENROUTER_IGNORED_PROVIDERS", (), _csv,
        "comma-separated OpenRouter providers sent as `\"provider\": {\"ignore\": [...]}` unless a request sets"
        " `provider`",
    )
    key_cooldown: float = setting(
        "KEY_COOLDOWN", 60.0, _seconds(strict=True),
        "seconds a key of a provider's pool rests after an upstream 401, or a 429 without `Retry-After`"
        " ([Keys, limits and budgets](#keys-limits-and-budgets))",
    )
    provider_limits_file: str = setting(
        "PROVIDER_LIMITS_FILE", "", _text,
        "JSON object `{provider: {\"rpm\": N, \"tpm\": N, \"tokens_per_day\": N, \"usd_per_day\": X}}`, each field"
        " optional; the key `\"*\"` (`tokens_per_day`, `usd_per_day`) for the node's total across providers"
        " ([Keys, limits and budgets](#keys-limits-and-budgets)); a bad file stops start-up (exit 2)",
    )
    prices_file: str = setting(
        "PRICES_FILE", "", _text,
        "JSON object `{\"PROVIDER/MODEL\" or \"PROVIDER/*\": {\"input\", \"output\", \"cache_read\","
        " \"cache_write\"}}`: USD per million tokens, the cost of every call ([Cost](#cost)); unset: no cost is"
        " computed; a bad file stops start-up (exit 2) naming the model and field",
    )
    anthropic_max_tokens: int = setting(
        "ANTHROPIC_MAX_TOKENS", 4096, _int(1),
        "`max_tokens` sent to an `anthropic` target when a chat request sets neither `max_tokens` nor"
        " `max_completion_tokens` (Anthropic requires one)",
    )
    redis_url: str = setting(
        "REDIS_URL", "", _redis_url,
        "`redis://` or `rediss://` URL (user, password and database in it) of a Redis that keeps limit windows, key"
        " cooling and circuits for every worker and node that points at it ([Running several workers or"
        " nodes](#running-several-workers-or-nodes)); unset: per process, no connection",
        secret=True,
    )
    redis_prefix: str = setting(
        "REDIS_PREFIX", "mira:", _text, "prefix of every Redis key the node writes", blank_is_default=True
    )
    redis_timeout: float = setting(
        "REDIS_TIMEOUT", 0.2, _seconds(strict=True),
        "seconds a Redis call may take; a slower or absent Redis is passed over for in-process state",
    )
    # Tracing: these say whether it is on and where spans go; the SDK reads every other OTEL_* variable itself.
    otel_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "", _url_or_empty,
        "an OTLP/HTTP collector's base URL (spans go to its `/v1/traces`): OpenTelemetry spans of every /v1 request"
        " and upstream attempt ([Tracing](#tracing)); unset, with the next one unset too: no tracing, no OpenTelemetry"
        " module loaded",
    )
    otel_traces_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", _url_or_empty,
        "the collector's full traces URL, taken as it is (wins over OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    otel_sdk_disabled: bool = setting(
        "OTEL_SDK_DISABLED", False, _bool, "`true`: no tracing, whatever endpoint is set"
    )
    # Derived by load_settings: the providers' URLs and keys, and the contents of the three files.
    providers: dict[str, ProviderSettings] = field(default_factory=dict)
    provider_limits: Mapping[str, ProviderLimits] = field(default_factory=dict)  # PROVIDER_LIMITS_FILE ("*" too)
    prices: Mapping[str, Price] = field(default_factory=dict, repr=False)  # PRICES_FILE
    supported_models: tuple[str, ...] = field(default=(), repr=False)  # SUPPORTED_MODELS_FILE's ids, without repeats
    model_fallbacks: Mapping[str, tuple[Fallback, ...]] = field(default_factory=dict, repr=False)  # MODEL_FALLBACKS_FILE
    model_aliases: Mapping[str, tuple[str, str]] = field(default_factory=dict, repr=False)  # MODEL_ALIASES_FILE

    @property
    def traces_url(self) -> str:
        """Where spans are exported ('' when tracing is off): the traces endpoint, else the base one's ``/v1/traces``."""
        if self.otel_sdk_disabled:
            return ""
        return self.otel_traces_endpoint or (self.otel_endpoint + "/v1/traces" if self.otel_endpoint else "")

    def secrets(self) -> list[str]:
        """Every configured secret value, for redaction of logs and messages."""
        values = [self.admin_api_token, self.machine_api_token, *self.service_api_keys]
        values += [key for p in self.providers.values() for key in p.api_keys]
        values.append(redis_password(self.redis_url))
        return [v for v in values if v]


ENV_FILE = Setting(
    "ENV_FILE", ".env", _text,
    "file of `NAME=value` lines read for the variables the environment does not set (relative: to the working"
    " directory); no `.env`: none; an ENV_FILE that does not exist stops start-up (exit 2)",
)

# The settings table: every variable the node reads, in the order it reads them.
SETTINGS: tuple[Setting, ...] = (
    ENV_FILE,
    *(replace(f.metadata[_ROW], attr=f.name) for f in fields(Settings) if _ROW in f.metadata),
    *(
        row
        for name, provider in PROVIDERS.items()
        for row in (
            Setting(provider.url_var, provider.url_default, _url, f"the `{name}/` provider"),
            Setting(provider.key_var, "", _text, f"the `{name}/` provider", secret=True),
        )
    ),
)
SETTING_OF: dict[str, Setting] = {row.env: row for row in SETTINGS}

# Every environment variable the node reads: tests and the benchmark clear these (and only these), so a
# developer's own settings never leak into a run; the demo sets the ones it needs and passes on none of them.
ENV_VARIABLES: tuple[str, ...] = tuple(SETTING_OF)


def env_name(attr: str) -> str:
    """The environment variable of a :class:`Settings` attribute (KeyError when it has none)."""
    for row in SETTINGS:
        if row.attr == attr:
            return row.env
    raise KeyError(attr)


# -- loading ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvFile:
    """The ``.env`` file read for the variables the environment does not set: its name and its lines."""

    name: str  # as ENV_FILE (or its default) gives it; "" when there is no file
    repository: Any = field(default_factory=RepositoryEmpty, repr=False)  # python-decouple's reading of it

    @property
    def values(self) -> Mapping[str, str]:
        """Its ``NAME=value`` lines, as python-decouple reads them (never shown: they may hold secrets)."""
        data: Mapping[str, str] = getattr(self.repository, "data", {})
        return data


def read_env_file(env_file: str | None = None) -> EnvFile:
    """The file ENV_FILE names (``env_file`` when given); ConfigError when it was named and cannot be read.

    The default, ``.env`` in the working directory, may be missing: then there is none. An empty ENV_FILE
    means none as well.
    """
    named = env_file if env_file is not None else os.environ.get(ENV_FILE.env)
    path = ENV_FILE.default if named is None else named.strip()
    if not path or (named is None and not Path(path).is_file()):
        return EnvFile("")
    where = f"{ENV_FILE.env}={path!r}"
    if not os.path.exists(path):
        raise ConfigError(f"{where}: not found")
    if os.path.isdir(path):
        raise ConfigError(f"{where}: is a directory, not a file")
    try:
        return EnvFile(path, RepositoryEnv(path))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: cannot be read (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc.__class__.__name__})") from None


def _make_config(env_file: str | None) -> Config:
    """The environment, then the ``.env`` file (:func:`read_env_file`)."""
    return Config(read_env_file(env_file).repository)


def masked_url(url: str) -> str:
    """``url`` with the password of its user info (``user:password@``) written ``********``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return MASKED
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASKED}@{parts.netloc.rpartition('@')[2]}"))


def _shown_secret(text: str) -> str:
    """A secret's text in a message: a URL without its password (REDIS_URL), anything else not at all."""
    return masked_url(text) if "://" in text else MASKED


def _read(config: Config, row: Setting) -> Any:
    raw = config.get(row.env, default=None)
    try:
        return row.read(None if raw is None else str(raw))
    except ValueError as exc:
        text = _shown_secret(str(raw)) if row.secret else str(raw)
        shown = text if len(text) <= 40 else text[:40] + "..."
        detail = str(exc) if not str(exc).startswith(("invalid literal", "could not")) else "is not a number"
        raise ConfigError(f"{row.env}={shown!r}: {detail}") from None


def read_setting(env: str, env_file: str | None = None) -> Any:
    """One variable's value, read and checked as :func:`load_settings` reads it (``VERSION`` for ``--version``)."""
    return _read(_make_config(env_file), SETTING_OF[env])


def _check(values: dict[str, Any], providers: Mapping[str, ProviderSettings]) -> None:
    """The checks that involve more than one variable."""
    if values["router_base_url"] and not (values["machine_api_token"] or values["admin_api_token"]):
        raise ConfigError(
            "ROUTER_BASE_URL is set but neither MACHINE_API_TOKEN nor ADMIN_API_TOKEN is: set MACHINE_API_TOKEN"
            " (heartbeats only) or ADMIN_API_TOKEN (register at start-up), or unset ROUTER_BASE_URL to run standalone"
        )
    liveness_interval = values["liveness_interval"]
    if liveness_interval >= ROUTER_LIVENESS_TTL:
        raise ConfigError(
            f"LIVENESS_INTERVAL={liveness_interval:g}: must be below {ROUTER_LIVENESS_TTL:g} seconds (the router forgets"
            f" a node {ROUTER_LIVENESS_TTL:g} s after its last heartbeat); 3 is the default"
        )
    default_provider = values["default_provider"]
    if default_provider and default_provider not in providers:
        raise ConfigError(f"DEFAULT_PROVIDER={default_provider[:40]!r}: must be one of {', '.join(providers)}")


def read_json(variable: str, path: str) -> Any:
    """The JSON of the file a variable names; ConfigError naming both when it is missing, unreadable or not JSON."""
    where = f"{variable}={path!r}"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    try:
        return ujson.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{where}: {_not_json(data, exc)}") from None


def _not_json(data: bytes, exc: ValueError) -> str:
    """What is wrong with a text ujson refused, with its line and column: ujson's own error gives no position,
    so the text is parsed again with the standard ``json`` module, whose error does."""
    try:
        json.loads(data)
    except json.JSONDecodeError as error:
        return f"not JSON at line {error.lineno}, column {error.colno}: {error.msg}"
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        return f"not JSON at line {line}, column {column}: not UTF-8 text"
    except ValueError:
        pass
    return f"not JSON: {str(exc)[:80]}"  # what only ujson refuses (NaN, a number out of its range)


def load_models(path: str) -> tuple[str, ...]:
    """The model ids of SUPPORTED_MODELS_FILE (a JSON array of strings), in order, without repeats."""
    data = read_json("SUPPORTED_MODELS_FILE", path)
    if not isinstance(data, list) or not all(isinstance(m, str) and m for m in data):
        raise ConfigError(f"SUPPORTED_MODELS_FILE={path!r}: must be a JSON array of model id strings")
    return tuple(dict.fromkeys(data))


def load_fallbacks(path: str, providers: ProviderNames) -> dict[str, tuple[Fallback, ...]]:
    """MODEL_FALLBACKS_FILE: ``{model id: [model ids]}``, every id routable; ConfigError otherwise."""
    if not path:
        return {}
    data = read_json("MODEL_FALLBACKS_FILE", path)
    if not isinstance(data, dict):
        raise ConfigError(f"MODEL_FALLBACKS_FILE={path!r}: must be a JSON object of model id -> list of model ids")
    table: dict[str, tuple[Fallback, ...]] = {}
    for model, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ConfigError(f"MODEL_FALLBACKS_FILE={path!r}: the value of {model!r} must be a list of model ids")
        try:
            table[model] = tuple(fallback_of(i, providers) for i in ids)
        except ApiError as exc:
            raise ConfigError(f"MODEL_FALLBACKS_FILE={path!r}: {model!r}: {exc.message}") from None
    return table


def load_aliases(path: str, providers: ProviderNames) -> dict[str, tuple[str, str]]:
    """MODEL_ALIASES_FILE: ``{name: "PROVIDER/MODEL"}``, every target routable (aliases do not chain); ConfigError otherwise."""
    if not path:
        return {}
    where = f"MODEL_ALIASES_FILE={path!r}"
    data = read_json("MODEL_ALIASES_FILE", path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a JSON object of model name -> \"PROVIDER/MODEL\"")
    table: dict[str, tuple[str, str]] = {}
    for name, target in data.items():
        if not name:
            raise ConfigError(f"{where}: an alias name must not be empty")
        if not isinstance(target, str):
            raise ConfigError(f"{where}: the value of {name[:60]!r} must be a model id string (PROVIDER/MODEL)")
        if target in data:
            raise ConfigError(f"{where}: {name[:60]!r} -> {target[:60]!r} is itself an alias: aliases do not chain")
        try:
            table[name] = split_model(target, providers)
        except ApiError as exc:
            raise ConfigError(f"{where}: {name[:60]!r}: {exc.message}") from None
    return table


def load_limits(path: str, providers: Mapping[str, ProviderSettings]) -> dict[str, ProviderLimits]:
    """PROVIDER_LIMITS_FILE: ``{provider: {"rpm": N, "tpm": N, "tokens_per_day": N, "usd_per_day": X}}``, and
    ``"*"`` (the node's total: ``tokens_per_day``, ``usd_per_day``); ConfigError otherwise.

    Every provider must be a configured one, every field one of the four (a typo would silently lift a
    limit), every token or call limit a whole number, 0 or more, ``usd_per_day`` a number, 0 or more.
    """
    if not path:
        return {}
    where = f"PROVIDER_LIMITS_FILE={path!r}"
    data = read_json("PROVIDER_LIMITS_FILE", path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a JSON object of provider -> {{\"rpm\", \"tpm\", \"tokens_per_day\","
                          " \"usd_per_day\"}")
    table: dict[str, ProviderLimits] = {}
    for provider, entry in data.items():
        names = NODE_LIMIT_NAMES if provider == NODE_WIDE else LIMIT_NAMES
        if provider != NODE_WIDE and provider not in providers:
            raise ConfigError(f"{where}: unknown provider {provider[:40]!r} (one of {', '.join(providers)}, or"
                              f" {NODE_WIDE!r} for the node's total)")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: the value of {provider!r} must be an object with {', '.join(names)}")
        for name, value in entry.items():
            if name not in names:
                whose = "the node-wide entry" if provider == NODE_WIDE else provider
                raise ConfigError(f"{where}: {whose}: unknown limit {name[:40]!r} (one of {', '.join(names)})")
            if value is None:
                continue
            if name == "usd_per_day":
                if not _amount(value):
                    raise ConfigError(f"{where}: {provider}.{name} must be a number of USD, 0 or more"
                                      f" (got {str(value)[:40]})")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{where}: {provider}.{name} must be a whole number, 0 or more (got {str(value)[:40]})")
        table[provider] = ProviderLimits(**entry)
    return table


def _amount(value: Any) -> bool:
    """Whether a JSON value is an amount of money: a finite number, 0 or more (not ``true``)."""
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and value >= 0 and value != float("inf")
    )


def load_prices(path: str, providers: Mapping[str, ProviderSettings]) -> dict[str, Price]:
    """PRICES_FILE: ``{"PROVIDER/MODEL" or "PROVIDER/*": {"input", "output", "cache_read", "cache_write"}}``, USD per
    million tokens; ConfigError naming the model and the field otherwise.

    ``input`` and ``output`` are required, the cache prices default to ``input``; a field the node does not
    know is refused (a typo would price cache reads as input without a word). Keys that begin with ``_`` are
    comments (the date the prices were copied, their source).
    """
    if not path:
        return {}
    where = f"PRICES_FILE={path!r}"
    data = read_json("PRICES_FILE", path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a JSON object of \"PROVIDER/MODEL\" -> {{\"input\", \"output\"}}"
                          " (USD per million tokens)")
    table: dict[str, Price] = {}
    for model, entry in data.items():
        if model.startswith("_"):
            continue  # a comment
        shown = model[:80]
        provider, _, name = model.partition("/")
        if not name:
            raise ConfigError(f"{where}: {shown!r} must be PROVIDER/MODEL (as routed, after aliases) or PROVIDER/*")
        if provider not in providers:
            raise ConfigError(f"{where}: {shown!r}: unknown provider {provider[:40]!r} (one of {', '.join(providers)})")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: {shown}: must be an object with \"input\" and \"output\" (USD per million"
                              " tokens), and optionally \"cache_read\" and \"cache_write\"")
        for field_name, value in entry.items():
            if field_name not in PRICE_FIELDS:
                raise ConfigError(f"{where}: {shown}: unknown field {field_name[:40]!r} (one of"
                                  f" {', '.join(PRICE_FIELDS)})")
            if not _amount(value):
                raise ConfigError(f"{where}: {shown}.{field_name} must be a number of USD per million tokens, 0 or"
                                  f" more (got {str(value)[:40]})")
        for required in ("input", "output"):
            if required not in entry:
                raise ConfigError(f"{where}: {shown}: {required!r} is required (USD per million tokens)")
        given = {name: float(value) for name, value in entry.items()}
        table[model] = Price(
            given["input"], given["output"], given.get("cache_read", given["input"]),
            given.get("cache_write", given["input"]),
        )
    return table


def load_settings(env_file: str | None = None) -> Settings:
    """Read and validate every setting; raise :class:`ConfigError` on a bad value."""
    config = _make_config(env_file)
    read = {row.env: _read(config, row) for row in SETTINGS if row is not ENV_FILE}
    values = {row.attr: read[row.env] for row in SETTINGS if row.attr}
    providers = {
        name: ProviderSettings(name=name, base_url=read[row.url_var], api_keys=_csv(read[row.key_var]), api=row.api)
        for name, row in PROVIDERS.items()
    }
    _check(values, providers)
    plain = ProviderNames(providers, values["default_provider"])
    aliases = load_aliases(values["model_aliases_file"], plain)
    routable = ProviderNames(providers, values["default_provider"], aliases)  # as the provider registry splits models
    return Settings(
        **values,
        providers=providers,
        supported_models=load_models(values["supported_models_file"]),
        model_fallbacks=load_fallbacks(values["model_fallbacks_file"], routable),
        model_aliases=aliases,
        provider_limits=_priced_budgets(load_limits(values["provider_limits_file"], providers), values["prices_file"]),
        prices=load_prices(values["prices_file"], providers),
    )


def _priced_budgets(limits: dict[str, ProviderLimits], prices_file: str) -> dict[str, ProviderLimits]:
    """A dollar budget needs prices: ``usd_per_day`` without PRICES_FILE would refuse every call (ConfigError)."""
    budgets = [name for name, entry in limits.items() if entry.usd_per_day is not None]
    if budgets and not prices_file:
        raise ConfigError(
            f"PROVIDER_LIMITS_FILE sets usd_per_day for {', '.join(budgets)} but PRICES_FILE is not set: a dollar"
            " budget needs the price of every model it applies to"
        )
    return limits


# -- what --check-config shows: names that are not settings, the effective settings --------------------------------

TYPO_EDITS = 2  # a name within this many edits of a setting is taken for a typo of it
# What the first word (the text before the first "_") of a variable the node reads can be.
FIRST_WORDS = frozenset(name.split("_", 1)[0] for name in ENV_VARIABLES)
FOREIGN_PREFIXES = ("OTEL_",)  # read by others in the node's process: the OpenTelemetry SDK reads OTEL_*


def _edits(a: str, b: str, limit: int) -> int:
    """The Damerau-Levenshtein distance of ``a`` and ``b`` (optimal string alignment: insertions, deletions,
    substitutions and swaps of two neighbours); ``limit + 1`` for anything beyond ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        before, previous = previous, current
    return min(previous[-1], limit + 1)


def is_setting(name: str) -> bool:
    """Whether the node, or a library in its process (OTEL_*), reads the variable ``name``."""
    return name in SETTING_OF or name.startswith(FOREIGN_PREFIXES)


def nearest_setting(name: str) -> str | None:
    """The setting within :data:`TYPO_EDITS` edits of ``name`` (letter case aside), the nearest (the first of
    the table on a tie); None when there is none."""
    wanted = name.upper()
    best, fewest = None, TYPO_EDITS + 1
    for candidate in ENV_VARIABLES:
        edits = _edits(wanted, candidate, TYPO_EDITS)
        if edits < fewest:
            best, fewest = candidate, edits
    return best


def setting_typos(env: Mapping[str, str], dotenv_names: Iterable[str], env_file: str = ".env") -> list[str]:
    """One warning line for each name that is not a setting but was probably meant as one.

    Every name of the ``.env`` file (``dotenv_names``, read from ``env_file``) that is not a setting: it
    is there for the node, which ignores it. And each variable of the environment ``env`` whose first
    word (``OPENAI`` of ``OPENAI_APIKEY``) is the first word of a setting, which is not a setting, and is
    within two edits of one. Any other variable of the environment (PATH, HOME, ...) is none of the node's
    business. OTEL_* names are settings (of the OpenTelemetry SDK).
    """
    lines: list[str] = []
    reported: set[str] = set()
    for name in dotenv_names:
        if is_setting(name) or name in reported:
            continue
        reported.add(name)
        nearest = nearest_setting(name)
        hint = f"did you mean {nearest}?" if nearest else "the node does not read it"
        lines.append(f"{env_file}: {name[:80]} is not a setting ({hint})")
    for name in sorted(env):
        if is_setting(name) or name in reported or name.split("_", 1)[0].upper() not in FIRST_WORDS:
            continue
        nearest = nearest_setting(name)
        if nearest:
            lines.append(f"{name[:80]} is not a setting (did you mean {nearest}?)")
    return lines


def _text_of(value: Any) -> str:
    """A setting's value as a variable would hold it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _masked(value: Any) -> str:
    """A secret setting's value as --check-config shows it: never 8 characters of a secret in a row.

    A URL keeps all but its password (REDIS_URL); a key or token shows its first 4 characters when it
    has 16 or more, and how many keys a comma-separated list holds.
    """
    keys = value if isinstance(value, tuple) else tuple(item for item in [str(value)] if item)
    if not keys:
        return ""
    if not isinstance(value, tuple) and "://" in keys[0]:
        return masked_url(keys[0])
    first = keys[0]
    shown = first[:4] + "..." if len(first) >= 16 else MASKED
    count = f", {len(keys)} key{'' if len(keys) == 1 else 's'}" if isinstance(value, tuple) else ""
    return f"{shown}(masked{count})"


def effective_settings(settings: Settings, env_file: EnvFile, environ: Mapping[str, str]) -> list[str]:
    """``NAME=value (source)`` for every setting, in the table's order: the value the node runs with (secrets
    masked), and where it came from: ``environment``, the ``.env`` file's name, or ``default``.

    Should a secret stand in an ordinary setting's value too, it is masked there as the logs mask it.
    """
    redact = Redactor(settings.secrets())  # the logs' masking: no 8 characters of a secret in a row
    values: dict[str, Any] = {row.env: getattr(settings, row.attr) for row in SETTINGS if row.attr}
    for name, provider in PROVIDERS.items():
        values[provider.url_var] = settings.providers[name].base_url
        values[provider.key_var] = settings.providers[name].api_keys
    values[ENV_FILE.env] = environ.get(ENV_FILE.env, ENV_FILE.default)
    lines = []
    for row in SETTINGS:
        if row.env in environ:
            source = "environment"
        elif env_file.name and row is not ENV_FILE and row.env in env_file.values:
            source = env_file.name
        else:
            source = "default"
        value = values[row.env]
        shown = _masked(value) if row.secret else redact(_text_of(value))
        lines.append(f"{row.env}={shown} ({source})")
    return lines
