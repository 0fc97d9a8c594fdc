"""Which URLs from a dataset file may be fetched (DESIGN.md §2: URLs inside dataset files are untrusted).

Only http and https, checked again at every redirect hop (a public page may redirect to file:// or to the
cloud metadata service at 169.254.169.254). Hosts that resolve to loopback, private, link-local or other
non-public addresses are refused, unless --allow-private-hosts is given or the URL lies under a --mirror target:
on the target's own origin (scheme, host, port) and under its path, which is what a rewrite produces
(PrivateAllowance). A mirror on one port of a private host is no pass to the rest of it: with
`http://127.0.0.1:8000/` a row, or a redirect, cannot reach `http://127.0.0.1:6379/`. An IPv6 address that
carries an IPv4 one (mapped, translated, NAT64, 6to4, IPv4-compatible) is judged by that IPv4 address.
The check is done on the resolved addresses and the connection is then made to exactly those addresses, so a
DNS answer that changes between check and connect (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
DNS_CACHE_SECONDS = 300.0
DNS_CACHE_ENTRIES = 20_000  # a list names hundreds of thousands of hosts: the cache must not grow with it


class BlockedURL(Exception):
    """The URL's scheme or address is refused (status error `blocked_url`)."""


class ResolveTimeout(Exception):
    """Name resolution did not answer before the image's deadline."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lower-case host name or IP literal, without brackets
    port: int
    path: str  # path + query, what goes on the request line

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


def parse_target(url: str) -> Target:
    """Split an absolute http(s) URL; anything else is blocked_url."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # bad port, bad IPv6 literal
        raise BlockedURL(f"unparseable URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BlockedURL(f"scheme {scheme or '(none)'!r} is not http or https")
    host = _ascii_host((parts.hostname or "").lower())
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port or DEFAULT_PORTS[scheme], _quote_unsafe(path))


def _ascii_host(host: str) -> str:
    """IDNA form of an internationalised host name (http.client sends the Host header as ASCII)."""
    if not host:
        raise BlockedURL("URL has no host")
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise BlockedURL(f"host {host!r} is not a valid domain name") from None


def _quote_unsafe(path: str) -> str:
    """Percent-encode what may not appear on a request line, as browsers do: spaces and control characters
    (real CC3M URLs contain spaces) and non-ASCII characters (as UTF-8). Existing %XX escapes are kept.
    Without this http.client raises InvalidURL or UnicodeEncodeError instead of fetching the image."""
    if path.isascii() and not any(ord(c) <= 0x20 or ord(c) == 0x7F for c in path):
        return path
    return "".join(c if 0x20 < ord(c) < 0x7F else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in path)


# IPv6 ranges whose last 32 bits are an IPv4 address the packet ends up at: NAT64's well-known prefix (RFC 6052),
# IPv4-compatible (::a.b.c.d, deprecated; also holds :: and ::1) and IPv4-translated (::ffff:0:a.b.c.d, RFC 2765).
_CARRY_IPV4 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))
# Not global although Python 3.11 says so: local-use NAT64 (RFC 8215, a site's own translator, which reaches
# whatever that site routes, its private networks among them; where the IPv4 address sits in it depends on the
# site's prefix length) and the deprecated site-local fec0::/10.
_NOT_GLOBAL_V6 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b:1::/48", "fec0::/10"))


def is_public(address: str) -> bool:
    """True for a globally routable unicast address. An IPv6 address that carries an IPv4 one is judged by the
    IPv4 address, or `64:ff9b::7f00:1` (NAT64 of 127.0.0.1) would pass as a public IPv6 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in _NOT_GLOBAL_V6):
            return False
        ip = embedded_ipv4(ip) or ip
    return ip.is_global and not ip.is_multicast


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), 6to4 (2002:AABB:CCDD::/48), NAT64, IPv4-compatible
    or IPv4-translated address (_CARRY_IPV4); None for any other IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in network for network in _CARRY_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def allowance_entry(url: str) -> str | None:
    """A --mirror target as a PrivateAllowance entry: `scheme://host:port/path`, without user name, password or
    query (done markers record these entries, and the entry must not carry a secret); None when not http(s)."""
    try:
        target = parse_target(url)
    except BlockedURL:
        return None  # a local folder or file:// target: nothing to allow on the network
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{target.scheme}://{host}:{target.port}{target.path.partition('?')[0]}"


class PrivateAllowance:
    """Which URLs may reach a non-public address without --allow-private-hosts.

    An entry is a --mirror target prefix (allowance_entry: `http://10.0.0.5:8080/ggpht/` allows that origin under
    that path, what the rewrite produces, and nothing else of 10.0.0.5) or, for library callers and tests, a bare
    host name (`127.0.0.1`: that host on any port). A path that climbs with a `..` segment (also written `%2e%2e`,
    `..;`, or with a backslash) is never covered: the server would resolve it outside the prefix.
    """

    def __init__(self, entries: frozenset[str] = frozenset()):
        self.hosts = frozenset(e.lower() for e in entries if "://" not in e)
        prefixes = []
        for entry in sorted(e for e in entries if "://" in e):
            try:
                prefix = parse_target(entry)
            except BlockedURL:
                continue  # not a network prefix: it allows nothing
            prefixes.append((prefix.origin, prefix.path.partition("?")[0]))
        self.prefixes = tuple(prefixes)

    def covers(self, target: Target) -> bool:
        if target.host in self.hosts:
            return True
        return any(target.origin == origin and target.path.startswith(path) and not _climbs(target.path)
                   for origin, path in self.prefixes)

    def same_origin(self, target: Target) -> bool:
        """Whether a --mirror prefix lies on the target's origin (for the refusal's wording)."""
        return any(target.origin == origin for origin, _ in self.prefixes)


def _climbs(path: str) -> bool:
    """Whether a request path holds a `..` segment, in any spelling a server may decode."""
    path = path.partition("?")[0]
    for _ in range(3):  # %252e%252e: decoded twice by some stacks
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    return any(segment.split(";", 1)[0] == ".." for segment in path.replace("\\", "/").split("/"))


@lru_cache(maxsize=16)
def private_allowance(entries: frozenset[str]) -> PrivateAllowance:
    """The PrivateAllowance of these entries, built once (the img2dataset planner asks for every row)."""
    return PrivateAllowance(entries)


class AddressPolicy:
    """Resolves hosts (cached, with a deadline) and decides whether their addresses may be contacted."""

    def __init__(self, allowed_hosts: frozenset[str] = frozenset(), allow_private: bool = False, threads: int = 8):
        """`allowed_hosts`: PrivateAllowance entries (--mirror target prefixes, or bare host names)."""
        self.allowance = PrivateAllowance(frozenset(allowed_hosts))
        self.allow_private = allow_private
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._lock = threading.Lock()
        # getaddrinfo has no timeout of its own: it runs in a helper pool so the caller can stop waiting
        # when the image's deadline passes (a hung resolver must not hang the run).
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dns")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def addresses_for(self, target: Target, deadline: float) -> list[str]:
        """The checked addresses to connect to, in order, or BlockedURL / ResolveTimeout / socket.gaierror."""
        addresses = self._resolve(target.host, target.port, deadline)
        self.check(target, addresses)
        return addresses

    def check(self, target: Target, addresses: list[str]) -> None:
        """BlockedURL when `target` may not reach one of `addresses`. Asked again before a kept-alive connection
        serves another URL: a connection opened under a --mirror prefix is no pass to the rest of its origin."""
        if self.allow_private or self.allowance.covers(target):
            return
        refused = [a for a in addresses if not is_public(a)]
        if refused:  # one private answer is enough to refuse: a mixed answer is a rebinding trick
            where = " (outside the --mirror target's path)" if self.allowance.same_origin(target) else ""
            raise BlockedURL(f"{target.host} resolves to non-public address {refused[0]}{where}")

    def _resolve(self, host: str, port: int, deadline: float) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get((host, port))
        if cached and cached[0] > now:
            return cached[1]
        future = self._pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=max(0.0, deadline - now))
        except FutureTimeout:
            raise ResolveTimeout(host) from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not addresses:
            raise socket.gaierror(f"no address for {host}")
        with self._lock:
            if len(self._cache) >= DNS_CACHE_ENTRIES:
                self._cache.clear()  # crude but bounded; the hosts that matter come back on their next row
            self._cache[(host, port)] = (now + DNS_CACHE_SECONDS, addresses)
        return addresses
