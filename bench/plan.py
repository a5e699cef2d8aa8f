"""What one benchmark run does: its sizes (``QUICK``, ``FULL``), the shape of its load, where things are, its progress log.

Shared by every module of ``bench/run.py``; it imports none of them.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
JSON_CONNECTIONS = 64
MODEL = "openai/gpt-4o-mini"  # the model of post.lua's body and of the streams (relayed untranslated)
TRANSLATED_MODEL = "anthropic/gpt-4o-mini"  # the same, to a Messages provider: translated both ways
STREAMS_AT_ONCE = 50
STREAM_CHUNKS = 20
STREAM_INTERVAL_MS = 10
HOLD_INTERVAL_MS = 1000  # a held ("slow") stream gets one event a second
HOLD_MAX_EVENTS = 600  # and ends by itself after ten minutes at most
OPENING_AT_ONCE = 200  # held streams being opened concurrently
ABORT_SILENCE_MS = 60_000  # after its first event an abort probe's upstream stays silent
FD_RESERVE = 100  # descriptors a node needs besides two sockets per stream (client + upstream)
RELAY_STREAMS, RELAY_EVENTS, RELAY_INTERVAL_MS = 20, 400, 2.0
PACED_EVENTS, PACED_INTERVAL_MS = 1000, 1.0  # one stream at 1,000 events/s
# Anthropic's Messages API at the node's door (issue 30): requests to /v1/messages, relayed as they are to a Messages
# provider (anthropic/) and translated to chat and back for an OpenAI-chat one (openai/), measured beside chat's
# (post.lua's body to MODEL) on the same node. Name -> (model, the events a stream of N chunks brings beyond N).
MESSAGES_ROUTES = {"messages-relayed": (TRANSLATED_MODEL, 5), "messages-translated": (MODEL, 4)}
MESSAGES_TARGETS = {"messages-relayed": 1.05, "messages-translated": 1.20}  # CPU per request over chat's, at most


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    name: str
    json_seconds: int
    json_warmup: int
    stream_rounds: int
    alone_trials: int
    abort_trials: int
    holds: tuple[int, ...]
    hold_window: float
    cpu_rounds: int  # alternated JSON rounds (node, its variants, WORKERS=0 node, bare handler, floors)
    cpu_seconds: int  # wrk seconds per server per round
    event_rounds: int  # alternated stream rounds of the node: CPU per event of chat, Messages relayed and translated


QUICK = Plan(
    "quick", json_seconds=3, json_warmup=1, stream_rounds=2, alone_trials=10, abort_trials=10, holds=(1000,), hold_window=2.0,
    cpu_rounds=2, cpu_seconds=2, event_rounds=3,
)
FULL = Plan(
    "full",
    json_seconds=10,
    json_warmup=2,
    stream_rounds=5,
    alone_trials=30,
    abort_trials=20,
    holds=(1000, 2500, 5000, 10000),  # the scale curve: cost per stream against streams held
    hold_window=3.0,
    cpu_rounds=4,
    cpu_seconds=3,
    event_rounds=5,
)


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Nodes that differ from the plain one by a feature a request may or may not use, measured in the same
# alternated JSON rounds: name -> (label, the settings that turn the feature on).
GATE_LIST = ", ".join([f"198.51.100.{i}" for i in range(1, 25)] + [f"2001:db8::{i:x}" for i in range(1, 26)] + ["127.0.0.0/8"])
POOL = ",".join(f"sk-bench-pool-key-{i}" for i in range(1, 4))
LIMITS = {  # three providers with three keys each and every limit set (bench/limits.json: never reached)
    "OPENAI_API_KEY": POOL, "GROQ_API_KEY": POOL, "ANTHROPIC_API_KEY": POOL,
    "PROVIDER_LIMITS_FILE": str(Path(__file__).resolve().parent / "limits.json"),
}
NODE_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "gated": ("node with ALLOWED_CLIENTS (50 entries)", {"ALLOWED_CLIENTS": GATE_LIST}),
    "limits": ("node with key pools and limits (3 providers x 3 keys, rpm/tpm/tokens_per_day)", LIMITS),
    # REDIS_URL_SLOT is replaced by a loopback redis-server the run starts (the variant is left out without one)
    "redis": ("node with those limits shared on a loopback Redis (REDIS_URL)", {**LIMITS, "REDIS_URL": "{redis}"}),
    # issue 32: every call priced (PRICES_FILE), those limits plus dollar budgets per provider and node-wide ("*",
    # bench/budgets.json: never reached), shared on the loopback Redis; compare with "redis" for what cost adds
    "prices": ("node with prices and dollar budgets on a loopback Redis (PRICES_FILE, usd_per_day, \"*\")", {
        **LIMITS, "REDIS_URL": "{redis}", "PRICES_FILE": str(Path(__file__).resolve().parent / "prices.json"),
        "PROVIDER_LIMITS_FILE": str(Path(__file__).resolve().parent / "budgets.json"),
    }),
}
# The event loop of every server of a run, the node's EVENT_LOOP (the reference servers install the same one):
# BENCH_EVENT_LOOP=asyncio make bench runs the whole bench on asyncio's standard loop, for a figure-by-figure
# comparison with a run on the default, uvloop.
EVENT_LOOP = os.environ.get("BENCH_EVENT_LOOP", "uvloop")
REDIS_URL_SLOT = "{redis}"
# the same prices and budgets decided in process (no REDIS_URL): what pricing and dollar budgets add to "limits",
# without the run-to-run spread of Redis's pipelining
NODE_VARIANTS["prices-local"] = ("node with prices and dollar budgets in process (PRICES_FILE, usd_per_day, \"*\")", {
    k: v for k, v in NODE_VARIANTS["prices"][1].items() if k != "REDIS_URL"
})
# issue 34: the node runs on uvloop by default (EVENT_LOOP); this one on asyncio's standard loop, as before it
NODE_VARIANTS["asyncio"] = ("node on asyncio's standard loop (EVENT_LOOP=asyncio)", {"EVENT_LOOP": "asyncio"})
# issue 33: tracing on, every request sampled, spans exported (OTLP/HTTP) to the benchmark upstream, which answers
# any POST 200 like a collector would; UPSTREAM_SLOT is its base URL (procs.node_env puts it in)
UPSTREAM_SLOT = "{upstream}"
NODE_VARIANTS["tracing"] = (
    "node with tracing on, every request sampled (OTEL_EXPORTER_OTLP_ENDPOINT, spans to a sink answering 200)",
    {"OTEL_EXPORTER_OTLP_ENDPOINT": UPSTREAM_SLOT, "OTEL_TRACES_SAMPLER": "always_on"},
)
# BENCH_BASELINE=DIR: another checkout of the node (``git worktree add DIR REV``) runs as one more server of the
# rounds, for before/after figures of a change from one sitting.
BASELINE = os.environ.get("BENCH_BASELINE", "")
