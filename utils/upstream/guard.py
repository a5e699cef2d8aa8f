"""The SSRF guard: which addresses a per-request custom provider may reach.

A node faces the internet, and ``model_provider.base_url`` lets any caller
name the address it posts to. Unless CUSTOM_PROVIDER_ALLOW_PRIVATE is set, a
custom provider may not reach a loopback, private, link-local, shared
(100.64.0.0/10), unspecified, reserved or multicast address. It is checked
twice:

* before any call (:func:`check_custom_provider`): an IP literal, or every
  address the host name resolves to now, so that a forbidden target is a 400
  for the whole request (an eval never half-runs against it);
* where the connection is made (:class:`AddressGuard`, libcurl's
  open-socket callback): the address libcurl really connects to, so a name
  that resolves differently the second time (DNS rebinding) gets nowhere.

Configured providers are never filtered (``mira`` is a local Ollama).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pycurl

from models.chat import CustomProvider, forbidden
from utils.upstream.failures import FORBIDDEN_MESSAGE

RESOLVE_TIMEOUT = 5.0  # seconds for the early look-up; past it the connect-time check still holds


def address_forbidden(address: str) -> bool:
    """Whether a custom provider may not connect to ``address`` (an IPv4 or IPv6 literal)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            ip = embedded
    return ip.is_multicast or not ip.is_global


async def resolve_host(host: str) -> list[str]:
    """The addresses ``host`` resolves to now (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


Resolver = Callable[[str], Awaitable[list[str]]]  # a host name -> the addresses it resolves to now


async def check_custom_provider(custom: CustomProvider | None, allow_private: bool, resolve: Resolver = resolve_host) -> None:
    """400 ``custom_provider_forbidden`` when ``custom``'s host is (or resolves to) a forbidden address.

    ``resolve`` makes the early look-up (the system resolver by default). A
    name that does not resolve here is let through: the call then fails as
    unreachable, and the connect-time check applies all the same.
    """
    if custom is None or allow_private:
        return
    host = custom.host
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    else:
        if address_forbidden(host):
            raise forbidden(FORBIDDEN_MESSAGE)
        return
    try:
        addresses = await asyncio.wait_for(resolve(host), RESOLVE_TIMEOUT)
    except (OSError, TimeoutError, UnicodeError):
        return
    if any(address_forbidden(address) for address in addresses):
        raise forbidden(FORBIDDEN_MESSAGE)


class AddressGuard:
    """libcurl ``OPENSOCKETFUNCTION`` that refuses forbidden addresses; ``refused`` says it did."""

    __slots__ = ("refused",)

    def __init__(self) -> None:
        self.refused = False

    def __call__(self, purpose: int, address: Any) -> Any:
        if address.family in (socket.AF_INET, socket.AF_INET6) and not address_forbidden(str(address.addr[0])):
            return socket.socket(address.family, address.socktype, address.protocol)
        self.refused = True
        return pycurl.SOCKET_BAD
