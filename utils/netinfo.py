"""Finding the address this machine is known by, without sending a packet."""

from __future__ import annotations

import ipaddress
import socket
import struct

SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def _interface_addresses() -> list[str]:
    """IPv4 addresses of the network interfaces, in interface order (Linux)."""
    try:
        import fcntl
    except ImportError:  # not on Linux
        return []
    found = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _index, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
            found.append(socket.inet_ntoa(packed[20:24]))
    except OSError:
        pass
    finally:
        sock.close()
    return found


def detect_local_ip() -> str:
    """The first non-loopback IPv4 address of this machine, else ``127.0.0.1``.

    It looks at the network interfaces, then at what the host name resolves
    to. Behind NAT this is the private address: operators set MACHINE_IP.
    """
    candidates = _interface_addresses()
    try:
        candidates += [str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    for address in candidates:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if not ip.is_loopback and not ip.is_unspecified and not ip.is_link_local:
            return address
    return "127.0.0.1"
