"""The per-URL fetcher: response headers (X-Robots-Tag, Retry-After) and bounded resources (per-host slots, connections, one deadline across addresses)."""

from __future__ import annotations

import time

import pytest

from mmcorpus.fetch.urllist.fetcher import _retry_after, opted_out

# ------------------------------------------------------------------------------------------- headers


@pytest.mark.parametrize("values, out", [
    (["noai"], True), (["noindex, NoImageAI"], True), (["mmcorpus: noai"], True), (["*: noai"], True),
    (["otherbot: noai"], False), (["noindex"], False), ([], False), (["unavailable_after: 25 Jun 2010"], False),
    (["noindex", "noai"], True)])
def test_x_robots_tag(values, out):
    assert opted_out(values) is out


def test_retry_after():
    assert _retry_after("7") == 7.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# ------------------------------------------------------------------------------------ bounded resources


def test_host_slots_cap_and_forget_idle_hosts():
    from mmcorpus.fetch.urllist.fetcher import HostSlots

    slots = HostSlots(limit=2)
    assert slots.acquire("a", 0) and slots.acquire("a", 0)
    assert not slots.acquire("a", 0)  # third request to the same host waits (here: gives up at once)
    assert slots.acquire("b", 0) and len(slots) == 2
    for host in ("a", "a", "b"):
        slots.release(host)
    assert len(slots) == 0


def test_connections_per_thread_are_bounded(mirror, monkeypatch):
    from mmcorpus.fetch.urllist import fetcher as httpfetch

    monkeypatch.setattr(httpfetch, "CONNECTIONS_PER_THREAD", 1)
    mirror.put("a.jpg", b"x")
    fetcher = httpfetch.Fetcher(httpfetch.FetchPolicy(allow_private_hosts=True))
    try:
        for host in ("127.0.0.1", "localhost", "127.0.0.1"):  # two origins, one kept connection
            assert fetcher.fetch(f"http://{host}:{mirror.port}/a.jpg").data == b"x"
            assert [origin[1] for origin in fetcher._pool()] == [host]
    finally:
        fetcher.close()


def test_connecting_tries_the_addresses_within_one_deadline(monkeypatch):
    """A host whose addresses all swallow the connection attempt: each further address gets what is left of
    the deadline, not a fresh one (the watchdog only guards connected sockets)."""
    import socket

    from mmcorpus.fetch.urllist import fetcher as httpfetch

    given = []

    def blackhole(address, timeout):
        given.append(timeout)
        time.sleep(0.3)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", blackhole)
    conn = httpfetch._PinnedHTTP("example.org", 80, ["192.0.2.1", "192.0.2.2", "192.0.2.3"], timeout=0.5)
    with pytest.raises(TimeoutError):
        conn.connect()
    assert len(given) == 2 and given[0] == pytest.approx(0.5, abs=0.05) and given[1] < 0.35
