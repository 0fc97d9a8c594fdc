"""What leaves the process is safe to show: no credentials from URLs, no terminal control bytes from names.

Two things reach a terminal, a log file or a record on disk that should not:
- credentials inside URLs: a spec or `--mirror` URL with `user:password@`, or a signed URL whose query carries
  a token or signature (S3, GCS, Azure SAS, Hugging Face). `redact(text)` finds every URL in a text and
  replaces its userinfo with `***` and the values of the query parameters of SECRET_PARAMETERS with `***`;
- control characters in untrusted names (archive members, URLs and image paths from dataset files): an ESC
  or BEL byte in a member name would otherwise drive the user's terminal. `safe_text(text)` redacts and then
  writes every C0 control character, DEL and every C1 control character as a `\\x1b`-style escape.

They are applied at the sinks, never where a message is made: the CLI's error line and report, every log
handler (SafeLogFilter), the run records and the URL-list engine's messages. The URL itself keeps its
credentials wherever it is used for a request (requests sends basic auth from the userinfo).
"""

from __future__ import annotations

import logging
import re
from typing import Any

# Query parameters whose values are secrets, compared case-insensitively: exact names, and any name that
# contains one of SECRET_PARTS (`X-Amz-Signature`, `X-Amz-Security-Token`, `X-Goog-Credential`,
# `client_secret`, `hf_token`, `db_password`, ...). `key` is Google's API key parameter; `sig` Azure SAS's.
SECRET_PARAMETERS = frozenset({"key", "sig", "auth", "code", "pwd", "passwd", "apikey", "api-key", "api_key"})
SECRET_PARTS = ("token", "secret", "signature", "password", "credential", "apikey", "api_key", "api-key",
                "access_key", "accesskey", "private_key", "session")
MASK = "***"

# A URL runs from its scheme to the first blank, quote or angle bracket; trailing punctuation of the sentence
# around it (`...json: HTTP 404`, `(see https://x/y).`) is not part of it.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>`]*[^\s\"'<>`.,:;!?)\]}]")
_AUTHORITY = re.compile(r"^([^:/?#]+://)([^/?#]*)")
_PARAMETER = re.compile(r"([?&;#])([^=&#;?]+)=([^&#;]*)")  # `#access_token=`: OAuth's implicit flow
# C0 (with newline and tab), DEL, C1, and the lone surrogates that stand for undecodable bytes of a file name
# (os.fsdecode, tarfile): printed raw they would end the run with UnicodeEncodeError.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def is_secret_parameter(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_PARAMETERS or any(part in lowered for part in SECRET_PARTS)


def redact_url(url: str) -> str:
    """`https://user:pw@host/p?token=abc&x=1` -> `https://***@host/p?token=***&x=1`."""
    authority = _AUTHORITY.match(url)
    if authority and "@" in authority.group(2):
        host = authority.group(2).rsplit("@", 1)[1]
        url = f"{authority.group(1)}{MASK}@{host}{url[authority.end():]}"
    return _PARAMETER.sub(_mask_parameter, url)


def _mask_parameter(match: re.Match) -> str:
    separator, name, value = match.groups()
    return f"{separator}{name}={MASK}" if value and is_secret_parameter(name) else match.group(0)


def redact(text: str) -> str:
    """`text` with every URL in it passed through redact_url."""
    if "://" not in text:
        return text
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def escape_controls(text: str, *, one_line: bool = True) -> str:
    """Control characters as `\\x1b`, `\\n`, ... escapes; with `one_line` False, newlines stay (a report)."""
    pattern = _CONTROL if one_line else _CONTROL_BUT_NEWLINE
    return pattern.sub(_escape, text)


def _escape(match: re.Match) -> str:
    char = match.group(0)
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def safe_text(text: Any, *, one_line: bool = True) -> str:
    """What may be written to a terminal or a log: redacted, control characters escaped."""
    return escape_controls(redact(str(text)), one_line=one_line)


def redact_data(data: Any) -> Any:
    """A JSON-like structure with every string in it redacted (for --json and records on disk; JSON itself
    escapes control characters)."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact_data(key): redact_data(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(value) for value in data]
    return data


class SafeLogFilter(logging.Filter):
    """On a log handler: the record's message becomes safe_text of itself, one line (for every handler after
    this one too; safe_text of safe text is the same text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = safe_text(record.getMessage()), None
        return True
