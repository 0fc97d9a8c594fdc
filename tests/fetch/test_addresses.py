"""The address policy: schemes, URL parsing, which addresses are public."""

from __future__ import annotations

import time

import pytest

from mmcorpus.fetch.addresses import AddressPolicy, BlockedURL, is_public, parse_target

# ---------------------------------------------------------------------------------------------- urls


@pytest.mark.parametrize("url", ["ftp://h/x", "file:///etc/passwd", "javascript:alert(1)", "http://", "x.jpg",
                                 "http://h:99999/x", "http://[::1/x"])
def test_only_http_and_https(url):
    with pytest.raises(BlockedURL):
        parse_target(url)


def test_parse_target_quotes_spaces():
    target = parse_target("HTTPS://Example.COM/a b.jpg?q=1 2")
    assert (target.scheme, target.host, target.port, target.path) == ("https", "example.com", 443, "/a%20b.jpg?q=1%202")


def test_parse_target_non_ascii():
    assert parse_target("http://x/caf\u00e9 1.jpg?a=%C3%A9").path == "/caf%C3%A9%201.jpg?a=%C3%A9"
    assert parse_target("http://b\u00fccher.example/x").host == "xn--bcher-kva.example"


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("127.0.0.1", False), ("10.0.0.1", False),
    ("192.168.1.1", False), ("172.16.0.1", False), ("169.254.169.254", False), ("::1", False), ("fe80::1", False),
    ("::ffff:127.0.0.1", False), ("0.0.0.0", False), ("100.64.0.1", False), ("224.0.0.1", False)])
def test_public_addresses(address, public):
    assert is_public(address) is public


def test_address_policy():
    policy = AddressPolicy(allowed_hosts=frozenset({"10.0.0.5"}))
    try:
        assert policy.addresses_for(parse_target("http://10.0.0.5/x"), deadline=time.monotonic() + 5) == ["10.0.0.5"]
        with pytest.raises(BlockedURL):
            policy.addresses_for(parse_target("http://10.0.0.6/x"), deadline=time.monotonic() + 5)
        with pytest.raises(BlockedURL):
            policy.addresses_for(parse_target("http://localhost/x"), deadline=time.monotonic() + 5)
    finally:
        policy.close()
    everything = AddressPolicy(allow_private=True)
    assert everything.addresses_for(parse_target("http://10.0.0.6/x"), deadline=time.monotonic() + 5) == ["10.0.0.6"]
    everything.close()
