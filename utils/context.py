"""The state one node process shares between its handlers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ujson

from config import ConfigError, Settings
from utils.netinfo import detect_local_ip
from utils.providers import ProviderRegistry
from utils.redact import Redactor
from utils.upstream import UpstreamClient


def load_models(path: str) -> list[str]:
    """The model ids of SUPPORTED_MODELS_FILE (a JSON array of strings)."""
    try:
        data = ujson.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"SUPPORTED_MODELS_FILE={path!r}: cannot be read as JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, list) or not all(isinstance(m, str) and m for m in data):
        raise ConfigError(f"SUPPORTED_MODELS_FILE={path!r}: must be a JSON array of model id strings")
    return list(dict.fromkeys(data))


class NodeContext:
    """Settings, the upstream client and the counters of one process.

    Build it inside the running IOLoop (the curl client binds to it).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redactor = Redactor(settings.secrets())
        self.registry = ProviderRegistry(settings)
        self.models = load_models(settings.supported_models_file)
        self.models_body = ujson.dumps(
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": m.split("/", 1)[0]} for m in self.models]},
            escape_forward_slashes=False,
        ).encode()
        self.machine_ip = settings.machine_ip or detect_local_ip()
        self.upstream = UpstreamClient(settings, self.redactor)
        self.in_flight = 0
        self.draining = False
        self._idle: list[asyncio.Future[None]] = []

    def release(self) -> None:
        """One request of the in-flight count has ended."""
        self.in_flight -= 1
        if self.in_flight <= 0 and self._idle:
            for waiter in self._idle:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle.clear()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        if self.in_flight <= 0:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        await waiter

    async def aclose(self) -> None:
        await self.upstream.aclose()
