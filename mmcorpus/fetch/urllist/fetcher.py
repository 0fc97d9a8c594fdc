"""Fetch one image URL with everything the open web needs: a total deadline, a byte cap, manual
redirects checked at every hop, opt-out headers, retries with backoff on transient failures only.

Built on http.client with keep-alive connections kept per thread (measured faster than requests on two
cores; see docs/benchmarks.md). Every failure is mapped to one word of the status vocabulary
(mmcorpus.schema.ERRORS) so that users can count and retry them.
"""

from __future__ import annotations

import email.utils
import http.client
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin

from mmcorpus import USER_AGENT
from mmcorpus.fetch.addresses import (
    AddressPolicy,
    BlockedURL,
    ResolveTimeout,
    Target,
    parse_target,
)
from mmcorpus.schema import is_transient

REDIRECTS = (301, 302, 303, 307, 308)
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
UA_TOKEN = "mmcorpus"
_DRAIN_LIMIT = 64 * 1024  # error bodies up to this size are read to keep the connection; larger ones close it
# Kept-alive connections per thread. CC12M spreads over hundreds of thousands of hosts: without a bound every
# thread would keep a socket to each host it ever met and the process would run out of file descriptors.
CONNECTIONS_PER_THREAD = 4


@dataclass(frozen=True)
class FetchPolicy:
    timeout: float = 20.0  # TOTAL seconds per URL: DNS, connect, redirects, body, retries and backoff
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 10
    retries: int = 2  # extra attempts for transient failures (timeout, connection, 5xx, 408, 429)
    backoff: float = 0.5  # first retry waits about this long, then doubles (with jitter)
    respect_opt_out: bool = True
    host_connections: int = 16  # concurrent requests per host, per process
    allowed_hosts: frozenset[str] = frozenset()  # --mirror target prefixes allowed although private: PrivateAllowance
    allow_private_hosts: bool = False
    user_agent: str = USER_AGENT


@dataclass
class Fetched:
    """The outcome of one URL: `data` when it worked, else `error` (a word of schema.ERRORS)."""

    data: bytes | None = None
    error: str | None = None
    http_status: int | None = None
    detail: str = ""


class Failure(Exception):
    def __init__(self, error: str, http_status: int | None = None, detail: str = "", retry_after: float | None = None):
        super().__init__(f"{error}: {detail}" if detail else error)
        self.error, self.http_status, self.detail, self.retry_after = error, http_status, detail, retry_after


# ---------------------------------------------------------------------------------------- deadline watchdog


class Watchdog:
    """Shuts down sockets whose deadline has passed.

    Socket timeouts bound each recv(), not the whole download: a server that drips one byte per second
    keeps every recv() alive forever, which is how img2dataset runs hang at the end. This thread closes such
    sockets from outside; the blocked read then fails at once and is reported as `timeout`.
    """

    def __init__(self, tick: float = 0.1):
        self._armed: dict[int, tuple[float, socket.socket]] = {}
        self._lock = threading.Lock()
        self._tick = tick
        self._stopped = threading.Event()
        threading.Thread(target=self._run, name="deadline-watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def arm(self, sock: socket.socket, deadline: float) -> None:
        with self._lock:
            self._armed[id(sock)] = (deadline, sock)

    def disarm(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._armed.pop(id(sock), None)

    def _run(self) -> None:
        while not self._stopped.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                overdue = [key for key, (deadline, _) in self._armed.items() if deadline <= now]
                socks = [self._armed.pop(key)[1] for key in overdue]
            for sock in socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# ------------------------------------------------------------------------------------------- connections


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to an address checked by AddressPolicy, not to whatever DNS says at connect time."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses

    def connect(self) -> None:
        """Try the checked addresses in turn (a host whose IPv6 address is unreachable still works over IPv4),
        all within `timeout` together: the watchdog only guards the socket once it is connected."""
        error: OSError | None = None
        end = time.monotonic() + self.timeout
        for address in self.addresses:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"connecting to {self.host}: deadline passed")
            try:
                self.sock = socket.create_connection((address, self.port), remaining)
                break
            except OSError as exc:
                error = exc
        else:
            raise error or OSError(f"no address for {self.host}")
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(_PinnedHTTP):
    default_port = 443

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, addresses, timeout)
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


class Fetcher:
    """Thread-safe: share one per process; each thread keeps its own keep-alive connections."""

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self.addresses = AddressPolicy(policy.allowed_hosts, policy.allow_private_hosts)
        self.watchdog = Watchdog()
        self._local = threading.local()
        self._hosts = HostSlots(policy.host_connections)
        # Certificates verified against the system store, read when the fetcher is made: SSL_CERT_FILE /
        # SSL_CERT_DIR (a company CA, a test CA) apply to it.
        self._tls = ssl.create_default_context()

    def close(self) -> None:
        """Stop the watchdog and the resolver pool (connections close with their threads)."""
        self.watchdog.stop()
        self.addresses.close()

    # ---------------------------------------------------------------------------------- public
    def fetch(self, url: str) -> Fetched:
        """GET `url` within the policy's total deadline, retrying transient failures with backoff."""
        deadline = time.monotonic() + self.policy.timeout
        attempt = 0
        while True:
            try:
                data, status = self._follow(url, deadline)
                return Fetched(data=data, http_status=status)
            except Failure as failure:
                wait = self._retry_wait(failure, attempt, deadline)
                if wait is None:
                    return Fetched(error=failure.error, http_status=failure.http_status, detail=failure.detail)
                time.sleep(wait)
                attempt += 1

    def _retry_wait(self, failure: Failure, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next attempt, or None when it is not worth one (final error, retries
        used up, or the wait would pass the deadline: a timeout has no time left by definition)."""
        if attempt >= self.policy.retries or not is_transient(failure.error, failure.http_status):
            return None
        wait = self.policy.backoff * (2**attempt) * random.uniform(0.5, 1.5)
        if failure.retry_after is not None:
            wait = max(wait, failure.retry_after)
        return wait if time.monotonic() + wait < deadline else None

    # -------------------------------------------------------------------------------- redirects
    def _follow(self, url: str, deadline: float) -> tuple[bytes, int]:
        for _ in range(self.policy.max_redirects + 1):
            try:
                target = parse_target(url)
            except BlockedURL as exc:
                raise Failure("blocked_url", detail=str(exc)) from None
            location, data, status = self._request(target, deadline)
            if location is None:
                return data, status
            url = urljoin(url, location)
        raise Failure("too_many_redirects", status, detail=f"more than {self.policy.max_redirects} redirects")

    # ---------------------------------------------------------------------------------- one hop
    def _request(self, target: Target, deadline: float) -> tuple[str | None, bytes, int]:
        """One request. Returns (redirect location, b"", status) or (None, body, status)."""
        if not self._hosts.acquire(target.host, timeout=max(0.0, deadline - time.monotonic())):
            raise Failure("timeout", detail=f"no free connection to {target.host} before the deadline")
        try:
            return self._request_with_retry_on_stale(target, deadline)
        finally:
            self._hosts.release(target.host)

    def _request_with_retry_on_stale(self, target: Target, deadline: float) -> tuple[str | None, bytes, int]:
        conn, reused = self._connection(target, deadline)
        try:
            return self._exchange(conn, target, deadline)
        except Failure as failure:
            # A kept-alive connection the server already closed fails on first use: that says nothing
            # about the URL, so try once more on a fresh connection (this is not a retry attempt).
            if not (reused and failure.error == "connection" and time.monotonic() < deadline):
                raise
        conn, _ = self._connection(target, deadline)
        return self._exchange(conn, target, deadline)

    def _exchange(self, conn: _PinnedHTTP, target: Target, deadline: float) -> tuple[str | None, bytes, int]:
        """Send the request and read the answer; the connection is kept only when the answer was read
        to its end (a half-read body left on the socket would be parsed as the next response)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failure("timeout", detail="deadline passed")
        response = None
        try:
            if conn.sock is None:
                conn.timeout = remaining
                conn.connect()
            conn.sock.settimeout(remaining)
            self.watchdog.arm(conn.sock, deadline)
            try:
                conn.request("GET", target.path, headers=self._headers())
                response = conn.getresponse()
                return self._read(response)
            finally:
                self.watchdog.disarm(conn.sock)
                if response is None or response.will_close or getattr(response, "abandoned", False):
                    self._drop(target, conn)
        except Failure:
            raise
        except (socket.timeout, TimeoutError):
            raise Failure("timeout", detail="socket timeout") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError (UnicodeError among them): a request or answer http.client cannot encode or parse.
            # One odd URL among millions must cost its row, never the run.
            self._drop(target, conn)
            # After the watchdog shut the socket down, the read fails with some OSError: it is a timeout.
            if time.monotonic() >= deadline:
                raise Failure("timeout", detail="total deadline passed") from None
            raise Failure("connection", detail=f"{type(exc).__name__}: {exc}") from None

    def _read(self, response: http.client.HTTPResponse) -> tuple[str | None, bytes, int]:
        status = response.status
        if status in REDIRECTS:
            location = response.getheader("Location")
            self._drain(response)
            if not location:
                raise Failure("http_error", status, detail="redirect without Location")
            return location, b"", status
        if status in (404, 410):
            self._drain(response)
            raise Failure("not_found", status)
        if not 200 <= status < 300:
            retry_after = _retry_after(response.getheader("Retry-After"))
            self._drain(response)
            raise Failure("http_error", status, retry_after=retry_after)
        if self.policy.respect_opt_out and opted_out(response.msg.get_all("X-Robots-Tag") or []):
            _abandon(response)
            raise Failure("opted_out", status, detail="X-Robots-Tag")
        return None, self._body(response), status

    def _body(self, response: http.client.HTTPResponse) -> bytes:
        cap = self.policy.max_bytes
        length = response.length  # None for chunked / close-delimited bodies
        if length is not None and length > cap:
            _abandon(response)
            raise Failure("too_large", response.status, detail=f"Content-Length {length} > {cap}")
        if length is not None:
            return response.read()  # raises IncompleteRead when the server cuts the body short
        data = response.read(cap + 1)
        if len(data) > cap:
            _abandon(response)
            raise Failure("too_large", response.status, detail=f"body larger than {cap}")
        return data

    @staticmethod
    def _drain(response: http.client.HTTPResponse) -> None:
        if response.length is not None and response.length <= _DRAIN_LIMIT:
            response.read()
        else:
            _abandon(response)

    def _headers(self) -> dict[str, str]:
        return {"User-Agent": self.policy.user_agent, "Accept": "image/*,*/*;q=0.8", "Accept-Encoding": "identity"}

    # ------------------------------------------------------------------------------- connections
    def _pool(self) -> dict:
        """This thread's kept-alive connections by origin, least recently used first."""
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _connection(self, target: Target, deadline: float) -> tuple[_PinnedHTTP, bool]:
        """A kept-alive connection to the target's origin, or a new one (address checked first)."""
        pool = self._pool()
        conn = pool.pop(target.origin, None)
        try:
            if conn is not None and conn.sock is not None:
                pool[target.origin] = conn  # most recently used now
                self.addresses.check(target, conn.addresses)  # opened under a --mirror prefix: not for any path
                return conn, True
            addresses = self.addresses.addresses_for(target, deadline)
        except BlockedURL as exc:
            raise Failure("blocked_url", detail=str(exc)) from None
        except ResolveTimeout:
            raise Failure("timeout", detail=f"DNS for {target.host}") from None
        except OSError as exc:  # socket.gaierror: no such host
            raise Failure("connection", detail=f"DNS: {exc}") from None
        while len(pool) >= CONNECTIONS_PER_THREAD:
            pool.pop(next(iter(pool))).close()
        timeout = max(0.01, deadline - time.monotonic())
        if target.scheme == "https":
            conn = _PinnedHTTPS(target.host, target.port, addresses, timeout, self._tls)
        else:
            conn = _PinnedHTTP(target.host, target.port, addresses, timeout)
        pool[target.origin] = conn
        return conn, False

    def _drop(self, target: Target, conn: _PinnedHTTP) -> None:
        conn.close()
        pool = self._pool()
        if pool.get(target.origin) is conn:
            del pool[target.origin]


class HostSlots:
    """At most `limit` requests in flight per host. Entries exist only while a host has requests in flight,
    so the table stays small however many hosts a list names."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots: dict[str, list] = {}  # host -> [semaphore, users]
        self._lock = threading.Lock()

    def acquire(self, host: str, timeout: float) -> bool:
        with self._lock:
            entry = self._slots.get(host)
            if entry is None:
                entry = self._slots[host] = [threading.BoundedSemaphore(self.limit), 0]
            entry[1] += 1
        if entry[0].acquire(timeout=timeout):
            return True
        self._leave(host, entry)
        return False

    def release(self, host: str) -> None:
        with self._lock:  # once per request: one lock round, not two
            entry = self._slots[host]
            entry[1] -= 1
            if entry[1] == 0:  # nobody waits on the semaphore (waiters count themselves in first)
                del self._slots[host]
        entry[0].release()

    def _leave(self, host: str, entry: list) -> None:
        with self._lock:
            entry[1] -= 1
            if entry[1] == 0:
                del self._slots[host]

    def __len__(self) -> int:
        return len(self._slots)


def _abandon(response: http.client.HTTPResponse) -> None:
    """Stop reading a response midway; its connection must then be closed, not reused."""
    response.abandoned = True
    response.close()


def opted_out(values: list[str], ua_token: str = UA_TOKEN) -> bool:
    """X-Robots-Tag says noai/noimageai for every agent or for ours. A value may be scoped to an agent as
    `agent: directive, ...`; directives scoped to another agent do not apply to us."""
    for value in values:
        scope, sep, directives = value.partition(":")
        if not sep:
            scope, directives = "", value
        scope = scope.strip().lower()
        if scope and scope not in (ua_token, "*"):
            continue
        if any(d.strip().lower() in OPT_OUT_DIRECTIVES for d in directives.split(",")):
            return True
    return False


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (it is either a number of seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
