"""The upstream engine: everything between a validated request and the providers.

* ``transport``: the one module that knows Tornado's curl client (``Transport``, ``Transfer``,
  ``UpstreamCall``, ``Reply``), for provider calls and the router client's alike;
* ``failures``: typed upstream failures (what happened) and their one mapping to the caller's error;
* ``policy``: what to do about a failure: retry, fall back, count against the circuit, back-off;
* ``client``: the attempt engine: a request's plan of attempts, each retried as the policy says, for
  JSON calls and streams;
* ``routing``: a request's plan (the primary attempt, then its fallbacks) and the providers' circuits;
* ``relay``: a stream's bytes to the client (backpressure, silence watchdog);
* ``usage``: token usage read from answers and streams;
* ``providers``: the provider seam: the registry (where a model name is sent), the one interface a provider
  family implements (``providers/base.py``) and a module per family (``openai.py``, ``anthropic.py``);
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
