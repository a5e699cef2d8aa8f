"""Who may call the node: ALLOWED_CLIENTS, TRUSTED_PROXIES and SERVICE_API_KEY.

:class:`ClientGate` is built once per process from the settings. Handlers ask it
two things about a request, as soon as its headers are in:

* :meth:`ClientGate.client_of`: the client's address, the peer itself unless
  the peer is a trusted proxy, in which case the rightmost address of
  ``X-Forwarded-For`` that is not itself a trusted proxy;
* :meth:`ClientGate.allows`: whether that address is in ALLOWED_CLIENTS.

The lists are parsed once (``ipaddress`` networks, in ``config.py``). An answer
is remembered per address text, so the router calling again and again costs one
dictionary look-up; the memory is bounded (cleared when it fills). Unset lists
cost nothing: the handler does not call the gate at all.
"""

from __future__ import annotations

import hmac
from ipaddress import IPv4Address, IPv6Address, ip_address

from config import Network, Settings

MEMORY = 4096  # addresses remembered per list before the memory starts over


def _address(text: str) -> IPv4Address | IPv6Address | None:
    """An address from a peer or header text; ``::ffff:a.b.c.d`` counts as ``a.b.c.d``; None when not one."""
    try:
        address = ip_address(text.strip().split("%", 1)[0])  # a zone index (fe80::1%eth0) names no other host
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _Membership:
    """Whether an address text falls in a fixed list of networks, remembered per text."""

    __slots__ = ("networks", "known")

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks
        self.known: dict[str, bool] = {}

    def __call__(self, text: str) -> bool:
        found = self.known.get(text)
        if found is None:
            address = _address(text)
            found = address is not None and any(address in net for net in self.networks if net.version == address.version)
            if len(self.known) >= MEMORY:
                self.known.clear()
            self.known[text] = found
        return found


class ClientGate:
    """The node's two independent gates on ``/v1/*``: client addresses and service keys."""

    def __init__(self, settings: Settings) -> None:
        self.restricted = bool(settings.allowed_clients)  # ALLOWED_CLIENTS set: check every /v1 request
        self.proxied = bool(settings.trusted_proxies)  # TRUSTED_PROXIES set: read X-Forwarded-For from them
        self.allows = _Membership(settings.allowed_clients)
        self.is_proxy = _Membership(settings.trusted_proxies)
        self._keys = [key.encode() for key in settings.service_api_keys]

    def client_of(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: the peer, or, from a trusted proxy, the rightmost untrusted X-Forwarded-For hop."""
        if not forwarded_for or not self.proxied or not self.is_proxy(peer):
            return peer
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            if not hop.strip():
                continue
            address = _address(hop)
            if address is None:
                return peer  # a hop that is no address: nothing left of it can be believed
            client = str(address)  # normalised: the header's own text never reaches a log line
            if not self.is_proxy(client):
                return client
        return client  # every hop a trusted proxy: the leftmost one is the client

    @property
    def needs_key(self) -> bool:
        return bool(self._keys)

    def key_accepted(self, authorization: str, api_key: str = "") -> bool:
        """Whether an ``Authorization: Bearer`` header (or, where ``api_key`` is given, an ``x-api-key`` header)
        carries one of SERVICE_API_KEY's keys (each compared in constant time)."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            if not api_key:
                return False
            token = api_key
        given = token.strip().encode()
        accepted = False
        for key in self._keys:
            accepted |= hmac.compare_digest(given, key)
        return accepted


def loopback_host(host: str) -> bool:
    """Whether HOST listens on loopback only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    address = _address(host)
    return address is not None and address.is_loopback
