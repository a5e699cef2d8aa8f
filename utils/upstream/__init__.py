"""The upstream engine: everything between a validated request and the providers.

* ``transport``: the one module that knows Tornado's curl client (``Transport``, ``Transfer``);
* ``failures``: typed upstream failures and their one mapping to the caller's error;
* ``client``: the attempt engine (retries with back-off) for JSON calls and streams;
* ``relay``: a stream's bytes to the client (backpressure, silence watchdog);
* ``providers``: where a model name is sent (URL, key, headers);
* ``guard``: which addresses a per-request custom provider may reach (SSRF).

Other modules import what they need from here.
"""

from utils.upstream.client import Cancel, UpstreamClient, UpstreamResponse
from utils.upstream.failures import SHUTDOWN, Cancelled, shutdown_error
from utils.upstream.guard import check_custom_provider
from utils.upstream.providers import ProviderRegistry, Target
from utils.upstream.relay import StreamResult, StreamSink

__all__ = [
    "SHUTDOWN",
    "Cancel",
    "Cancelled",
    "ProviderRegistry",
    "StreamResult",
    "StreamSink",
    "Target",
    "UpstreamClient",
    "UpstreamResponse",
    "check_custom_provider",
    "shutdown_error",
]
