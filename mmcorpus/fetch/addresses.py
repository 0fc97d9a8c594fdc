"""Which URLs from a dataset file may be fetched (DESIGN.md §2: URLs inside dataset files are untrusted).

Only http and https, checked again at every redirect hop (a public page may redirect to file:// or to the
cloud metadata service at 169.254.169.254). Hosts that resolve to loopback, private, link-local or other
non-public addresses are refused, unless the host is a --mirror target or --allow-private-hosts is given.
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
from urllib.parse import urlsplit

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


def is_public(address: str) -> bool:
    """True for a globally routable unicast address. IPv4-mapped IPv6 (::ffff:127.0.0.1) is unwrapped
    first, or it would pass as "not private"."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class AddressPolicy:
    """Resolves hosts (cached, with a deadline) and decides whether their addresses may be contacted."""

    def __init__(self, allowed_hosts: frozenset[str] = frozenset(), allow_private: bool = False, threads: int = 8):
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
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
        if self.allow_private or target.host in self.allowed_hosts:
            return addresses
        refused = [a for a in addresses if not is_public(a)]
        if refused:  # one private answer is enough to refuse: a mixed answer is a rebinding trick
            raise BlockedURL(f"{target.host} resolves to non-public address {refused[0]}")
        return addresses

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
