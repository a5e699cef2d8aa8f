"""The provider seam: the one interface every provider family implements.

A provider family is one dialect of LLM API: OpenAI's chat completions (and
the rest of OpenAI's surface) or Anthropic's Messages API. Providers are rows
of data (``config.PROVIDERS``: a base URL, key variables, the family); each
family is one module beside this one and says, for any provider of it:

* how a call is addressed and authenticated (:meth:`Family.path`,
  :meth:`Family.headers`);
* how a request body is prepared for it (:meth:`Family.prepare`: the model
  prefix already stripped, provider additions applied, usage asked for, or the
  whole request translated when the client speaks the other dialect);
* how its answers are read (the :class:`AnswerReader` that ``prepare`` returns:
  the client's bytes and the usage of a JSON answer; a :class:`StreamWatcher`
  fed a stream's bytes as they arrive, giving back the client's bytes at once).

Error bodies of both dialects read the same way (``{"error": {"message", "type"}}``
under an optional envelope), in :mod:`utils.upstream.failures`.

The attempt engine (:mod:`utils.upstream.client`) sees only :class:`Attempt`:
a target, the body, the reader; it never asks which family it is talking to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from models.chat import ProxyRequest
from models.endpoints import Endpoint
from utils.upstream.usage import Usage


class StreamWatcher(Protocol):
    """One stream's reader: upstream bytes in, the client's bytes out at once, the usage seen so far."""

    usage: Usage | None

    def feed(self, chunk: bytes) -> bytes:
        """The client's bytes for ``chunk`` (b"" when nothing is complete yet)."""
        ...

    def finish(self) -> bytes:
        """At the end of the upstream stream: whatever is still held back and belongs to the client."""
        ...


class AnswerReader(Protocol):
    """How one attempt's 2xx answer is read and passed on."""

    def json(self, body: bytes) -> tuple[bytes, Usage | None]:
        """The client's body for a JSON answer, and the usage it reports."""
        ...

    def stream(self) -> StreamWatcher:
        """A new watcher for a streamed answer."""
        ...


class Family(ABC):
    """One dialect a provider speaks (see the module docstring)."""

    api: str  # the family's name: ProviderRow.api and ``model_provider.api``

    @abstractmethod
    def path(self, endpoint: Endpoint) -> str | None:
        """The path (after the base URL) a request to the node's ``endpoint`` goes to; None: not offered."""

    @abstractmethod
    def headers(self, api_key: str) -> dict[str, str]:
        """The request headers of a call made with ``api_key`` ('' for none)."""

    @abstractmethod
    def prepare(self, request: ProxyRequest, additions: Mapping[str, Any]) -> Prepared:
        """The upstream body for ``request``, the reader of its answer, and the call's own headers and query.

        ``additions`` are the provider's own body fields, added when the
        request does not set them (OpenRouter's ``provider.ignore``). A request
        the provider cannot take raises ``ApiError`` (400), before any call.
        """


class Prepared(NamedTuple):
    """What a family makes of one request: the body, the answer's reader, and the call's own headers and query."""

    body: bytes
    reader: AnswerReader
    headers: tuple[bytes, ...] = ()
    query: str = ""


@dataclass(frozen=True)
class Target:
    """One upstream endpoint: the provider's name, the URL, the key and the headers made with it."""

    provider: str  # shown in error messages
    url: str
    api_key: str = field(repr=False)
    family: Family = field(repr=False)
    label: str = ""  # bounded metrics label: the configured name, or "custom"
    header_lines: list[bytes] = field(default_factory=list, repr=False)  # as libcurl takes them
    guarded: bool = False  # connect only to public addresses (a custom provider, see utils.upstream.guard)
    # Keys, limits and budgets (utils.upstream.ledger): a provider with a key pool or limits asks the ledger
    # before each call (gated); ``pool`` holds the target of each key of a pool of two or more.
    gated: bool = False
    limited: bool = False  # its answers' tokens are counted against its limits
    usd_budget: str = ""  # whose dollar budget (usd_per_day) applies: its provider's name, or the node's; "": none
    pool: tuple[Target, ...] = field(default=(), repr=False)


class Attempt(NamedTuple):
    """One target of a request: the model as the client names it, where it goes, the body, how to read the answer."""

    model_id: str  # "PROVIDER/MODEL" (a custom provider's model as given): X-Mira-Model
    target: Target
    body: bytes
    reader: AnswerReader
    headers: tuple[bytes, ...] = ()  # header lines of this request besides the target's (anthropic-version, ...)
    query: str = ""  # appended to the target's URL ("?beta=true")
    session: str = ""  # the session the request names: a key pool gives it the same key while that key is free
