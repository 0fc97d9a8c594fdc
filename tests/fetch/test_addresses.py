"""The address policy: schemes, URL parsing, which addresses are public."""

from __future__ import annotations

import time

import pytest

from mmcorpus.fetch.addresses import (
    AddressPolicy,
    BlockedURL,
    PrivateAllowance,
    allowance_entry,
    is_public,
    parse_target,
)
from mmcorpus.fetch.urls import MirrorRule, UrlRewriter

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


@pytest.mark.parametrize("address, public", [
    ("64:ff9b::7f00:1", False), ("64:ff9b::10.0.0.1", False), ("64:ff9b::169.254.169.254", False),  # NAT64
    ("64:ff9b::8.8.8.8", True),
    ("64:ff9b:1::7f00:1", False), ("64:ff9b:1::8.8.8.8", False),  # local-use NAT64: a site's own translator
    ("2002:7f00:1::", False), ("2002:a00:1::1", False), ("2002:a9fe:a9fe::", False), ("2002:808:808::1", True),  # 6to4
    ("::127.0.0.1", False), ("::10.0.0.1", False), ("::8.8.8.8", True),  # IPv4-compatible
    ("::ffff:0:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True),  # translated, mapped
    ("fec0::1", False), ("feff::1", False),  # site-local
    ("::", False), ("::1", False), ("2001::1", False)])
def test_ipv6_forms_of_ipv4_addresses_are_judged_as_the_ipv4_address(address, public):
    """Python 3.11 calls all the non-public ones above global: each reaches a private IPv4 address (or a site's
    own network) through a translator, a 6to4 relay or the host's own stack."""
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


def test_a_mirror_target_allows_its_origin_under_its_path_only():
    allowance = PrivateAllowance(frozenset({allowance_entry("http://10.0.0.5:8080/ggpht/")}))
    covered = [parse_target(u) for u in ("http://10.0.0.5:8080/ggpht/x.jpg", "HTTP://10.0.0.5:8080/ggpht/a/b?q=1")]
    assert all(allowance.covers(t) for t in covered)
    for url in ("http://10.0.0.5:6379/ggpht/x.jpg", "http://10.0.0.5/ggpht/x.jpg",  # another port
                "https://10.0.0.5:8080/ggpht/x.jpg",  # another scheme
                "http://10.0.0.6:8080/ggpht/x.jpg", "http://localhost:8080/ggpht/x.jpg",  # another host
                "http://10.0.0.5:8080/admin", "http://10.0.0.5:8080/", "http://10.0.0.5:8080/ggpht",  # other paths
                "http://10.0.0.5:8080/ggpht/../admin", "http://10.0.0.5:8080/ggpht/%2e%2E/admin",  # climbing out
                "http://10.0.0.5:8080/ggpht/%252e%252e/admin", "http://10.0.0.5:8080/ggpht/..;/admin",
                "http://10.0.0.5:8080/ggpht/..\\admin", "http://10.0.0.5:8080/ggpht/a/%2E%2E%2F..%2Fadmin"):
        assert not allowance.covers(parse_target(url)), url
    assert allowance.covers(parse_target("http://10.0.0.5:8080/ggpht/x.jpg?next=../admin"))  # a query climbs nothing
    assert PrivateAllowance(frozenset({"10.0.0.5"})).covers(parse_target("http://10.0.0.5:6379/"))  # a bare host


def test_mirror_targets_are_entries_without_secrets():
    rewrite = UrlRewriter([MirrorRule.parse("http://a/=http://user:pw@10.0.0.5:8080/ggpht/?token=s3cret"),
                           MirrorRule.parse("https://b/=HTTPS://[FD00::1]/"), MirrorRule.parse("http://c/=/srv/c/"),
                           MirrorRule.parse("http://d/=file:///srv/d/")])
    assert rewrite.mirror_targets() == {"http://10.0.0.5:8080/ggpht/", "https://[fd00::1]:443/"}
    allowance = PrivateAllowance(frozenset(rewrite.mirror_targets()))
    assert allowance.covers(parse_target("https://[fd00::1]/x.jpg"))
    assert not allowance.covers(parse_target("https://[fd00::1]:8443/x.jpg"))


def test_address_policy_refuses_other_ports_and_paths_of_a_mirror_target():
    policy = AddressPolicy(allowed_hosts=frozenset({"http://127.0.0.1:8000/pub/"}))
    try:
        deadline = time.monotonic() + 5
        assert policy.addresses_for(parse_target("http://127.0.0.1:8000/pub/x"), deadline) == ["127.0.0.1"]
        with pytest.raises(BlockedURL, match="non-public address 127.0.0.1$"):
            policy.addresses_for(parse_target("http://127.0.0.1:6379/pub/x"), deadline)
        with pytest.raises(BlockedURL, match="outside the --mirror target's path"):
            policy.addresses_for(parse_target("http://127.0.0.1:8000/private/x"), deadline)
        with pytest.raises(BlockedURL):  # a kept-alive connection of the mirror, asked for another path
            policy.check(parse_target("http://127.0.0.1:8000/private/x"), ["127.0.0.1"])
    finally:
        policy.close()
