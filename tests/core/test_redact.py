"""Redaction of credentials in URLs and escaping of control characters: the text that leaves the process."""

from __future__ import annotations

import logging

import pytest

from mmcorpus.core.redact import SafeLogFilter, redact, redact_data, safe_text

S3, GCS, AZURE = ("https://b.s3.amazonaws.com/k", "https://storage.googleapis.com/b/o",
                  "https://acct.blob.core.windows.net/c/b")


@pytest.mark.parametrize("url, shown", [
    ("https://user:s3cret@host.org/a.json", "https://***@host.org/a.json"),
    ("https://token@host.org/", "https://***@host.org/"),
    ("https://u:p@ss@host.org:8080/x", "https://***@host.org:8080/x"),
    ("https://h/a?token=abc&page=2", "https://h/a?token=***&page=2"),
    (S3 + "?X-Amz-Algorithm=AWS4&X-Amz-Credential=AK%2F1&X-Amz-Signature=def&X-Amz-Security-Token=t&X-Amz-Expires=6",
     S3 + "?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***&X-Amz-Expires=6"),
    (GCS + "?X-Goog-Signature=1a&X-Goog-Date=2", GCS + "?X-Goog-Signature=***&X-Goog-Date=2"),
    (AZURE + "?sv=2020&sig=AbC%3D&se=2030", AZURE + "?sv=2020&sig=***&se=2030"),
    ("https://h/x?Signature=s&Key-Pair-Id=k&Policy=p", "https://h/x?Signature=***&Key-Pair-Id=k&Policy=p"),
    ("https://h/x?access_token=a&api_key=b&apikey=c&key=d&password=e&client_secret=f",
     "https://h/x?access_token=***&api_key=***&apikey=***&key=***&password=***&client_secret=***"),
    ("https://h/cb#access_token=a&state=1", "https://h/cb#access_token=***&state=1"),
    ("hf://datasets/owner/repo@main/data.json", "hf://datasets/owner/repo@main/data.json"),  # @ in the path
    ("https://h/a?tokens_per_page=&x=1", "https://h/a?tokens_per_page=&x=1"),  # nothing to hide
])
def test_redact_hides_userinfo_and_secret_parameters(url, shown):
    assert redact(url) == shown


def test_redact_finds_urls_inside_a_message_and_keeps_the_sentence():
    message = ("mine/data.json: http://user:s3cret@127.0.0.1:80/missing.json?token=abc&X-Amz-Signature=def: "
               "HTTP 404 (see https://a:b@mirror.org/x?sig=s).")
    assert redact(message) == ("mine/data.json: http://***@127.0.0.1:80/missing.json?token=***&X-Amz-Signature=***: "
                               "HTTP 404 (see https://***@mirror.org/x?sig=***).")
    assert redact("no url: user:pw@host, ?token=x") == "no url: user:pw@host, ?token=x"


def test_safe_text_escapes_c0_del_c1_and_undecodable_bytes():
    name = "pics/\x1b[31mred\x07\x00\x7f\x9b\udc9b.jpg"
    assert safe_text(name) == "pics/\\x1b[31mred\\x07\\x00\\x7f\\x9b\\udc9b.jpg"
    assert safe_text("two\nlines\ttab\r") == "two\\nlines\\ttab\\r"
    assert safe_text("a report\nof two lines \x1b", one_line=False) == "a report\nof two lines \\x1b"
    assert safe_text("ünïcode ✓") == "ünïcode ✓"
    once = safe_text("https://u:p@h/?token=t \x1b")
    assert safe_text(once) == once  # idempotent: a filter applied twice changes nothing


def test_redact_data_walks_json_structures():
    data = {"files": [{"url": "https://u:p@h/a?token=t", "size": 3}], "ok": True, "n": None}
    assert redact_data(data) == {"files": [{"url": "https://***@h/a?token=***", "size": 3}], "ok": True, "n": None}


def test_log_filter_makes_the_message_safe():
    record = logging.LogRecord("mmcorpus", logging.ERROR, __file__, 1, "%s: failed at %s",
                               ("https://u:s3cret@h/x?token=abc", "member \x1b[31m\x07\nnext"), None)
    assert SafeLogFilter().filter(record)
    assert record.getMessage() == "https://***@h/x?token=***: failed at member \\x1b[31m\\x07\\nnext"
