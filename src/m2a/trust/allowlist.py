"""Egress allow-lists: ``host:port`` entries (a DNS name, ``*.`` + a name for its subdomains, an IPv4
address or ``[IPv6]``), how one entry is checked and normalised (``check_entry``, the rule agents'
manifests use too), and whether a destination is allowed (``AllowList.allows``).

Matching is strict: names match names case-insensitively (a trailing dot ignored), ``*.example.com``
matches any subdomain of example.com but not example.com itself, IP addresses match only IP entries
(a name never matches an IP entry, whatever it resolves to), and ports match exactly. An empty list
allows nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_ENTRY = 300


def check_entry(entry: str) -> str:
    """``host:port`` (a DNS name, ``*.`` + a DNS name, an IPv4 address or ``[IPv6]``), lower-cased.

    Raises ``ValueError`` with a message a person can act on."""
    if not isinstance(entry, str) or not entry or len(entry) > MAX_ENTRY:
        raise ValueError("an egress entry is host:port, e.g. api.example.com:443")
    if "://" in entry or "/" in entry:
        raise ValueError(f"{entry!r}: write host:port, without a scheme or a path (api.example.com:443)")
    host, sep, port = entry.strip().lower().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{entry!r} is not host:port (e.g. api.example.com:443)")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535 or port != str(int(port)):
        raise ValueError(f"{entry!r}: the port is a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ip6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ValueError(f"{entry!r}: {host} is not an IPv6 address") from exc
        return f"[{ip6.compressed}]:{int(port)}"
    if ":" in host:
        raise ValueError(f"{entry!r}: write an IPv6 address in brackets, [::1]:443")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return f"{ipaddress.IPv4Address(host)}:{int(port)}"
        except ValueError as exc:
            raise ValueError(f"{entry!r}: {host} is not an IPv4 address") from exc
    name = host.removeprefix("*.")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels) or "*" in name:
        raise ValueError(
            f"{entry!r}: {host} is not a host name (letters, digits and '-' between dots; "
            "a leading '*.' for subdomains; no scheme or path)"
        )
    return f"{host}:{int(port)}"


def parse_hostport(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` split into host (as written) and port, or None. The host is not
    checked here: :func:`destination` does that."""
    if text.startswith("["):
        host, sep, rest = text.partition("]")
        host += sep
        if not sep or not rest.startswith(":"):
            return None
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            return None
    if not host or not port.isascii() or not port.isdigit() or len(port) > 5:
        return None
    return host, int(port)


def parse_ip(host: str) -> IPAddress | None:
    """The IP address ``host`` spells (IPv4 dotted, IPv6 bare or in brackets), or None for a name."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if "%" in text:  # a scoped IPv6 address (fe80::1%eth0) is never a destination here
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def normalize_name(host: str) -> str | None:
    """A DNS name lower-cased without its trailing dot, or None when ``host`` is not a valid name."""
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or not name.isascii():
        return None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


@dataclass(frozen=True)
class Destination:
    """A checked destination: exactly one of ``ip`` (an address) or ``name`` (a DNS name), a port."""

    port: int
    ip: IPAddress | None = None
    name: str | None = None

    @property
    def host(self) -> str:
        """The host as it is written in ``host:port`` (IPv6 in brackets)."""
        if self.ip is None:
            return str(self.name)
        return f"[{self.ip.compressed}]" if self.ip.version == 6 else str(self.ip)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def destination(host: str, port: int) -> Destination | None:
    """``host`` and ``port`` checked (a valid IP or DNS name, a port from 1 to 65535), else None."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return None
    ip = parse_ip(host)
    if ip is not None:
        return Destination(port=port, ip=ip)
    if host.startswith("["):
        return None
    name = normalize_name(host)
    return None if name is None else Destination(port=port, name=name)


class AllowList:
    """A set of ``host:port`` entries (each checked by :func:`check_entry`); ``allows(host, port)``."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        normalised = sorted({check_entry(e) for e in entries})
        self._entries = tuple(normalised)
        self._names: set[tuple[str, int]] = set()
        self._suffixes: set[tuple[str, int]] = set()
        self._ips: set[tuple[IPAddress, int]] = set()
        for entry in normalised:
            host, _, port_text = entry.rpartition(":")
            port = int(port_text)
            ip = parse_ip(host)
            if ip is not None:
                self._ips.add((ip, port))
            elif host.startswith("*."):
                self._suffixes.add((host[1:], port))  # ".example.com"
            else:
                self._names.add((host, port))

    @property
    def entries(self) -> tuple[str, ...]:
        """The normalised entries, sorted."""
        return self._entries

    @property
    def ports(self) -> frozenset[int]:
        """Every port some entry allows."""
        return frozenset(int(e.rpartition(":")[2]) for e in self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AllowList) and other._entries == self._entries

    def __hash__(self) -> int:
        return hash(self._entries)

    def __repr__(self) -> str:
        return f"AllowList({list(self._entries)!r})"

    def allows(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is allowed. An invalid host or port is never allowed."""
        dest = destination(host, port)
        return dest is not None and self.match(dest) is not None

    def allows_destination(self, dest: Destination) -> bool:
        """Whether a checked destination is allowed (see the module's rules)."""
        return self.match(dest) is not None

    def match(self, dest: Destination) -> str | None:
        """The entry that allows ``dest`` (an exact one before a wildcard, the longest wildcard
        first), or None."""
        if dest.ip is not None:
            return str(dest) if self.names_ip(dest.ip, dest.port) else None
        name = str(dest.name)
        if (name, dest.port) in self._names:
            return str(dest)
        suffixes = [s for s, port in self._suffixes if port == dest.port and name.endswith(s)]
        return f"*{max(suffixes, key=len)}:{dest.port}" if suffixes else None

    def names_ip(self, ip: IPAddress, port: int) -> bool:
        """Whether an entry names this IP address literally, with this port."""
        return (ip, port) in self._ips
