"""Secrets never reach the journal: the journal is immutable, so redaction must come first.

`redact_secrets(text)` replaces what looks like a credential with `[REDACTED:<kind>]` and says which
kinds it found. Entry points that embed prose call it before embedding, so the vector does not
carry the secret either; `Journal.append` calls it again on every event's prose as the last
line of defence. Patterns are the common, high-precision shapes (provider key prefixes, PEM
private keys, JWTs, credentials in URLs, `password=...` assignments); anything else that is
secret must not be pasted in.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# kind -> (literal markers, at least one of which a match contains; the pattern). The markers
# are checked with `in` first: a regex scan of 1 KB costs ~10 µs a pattern, a substring test
# well under one, and most prose holds no marker at all.
PATTERNS: dict[str, tuple[tuple[str, ...], re.Pattern[str]]] = {
    "private_key": (("PRIVATE KEY-----",), re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----", re.S)),
    "aws_access_key": (("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    "github_token": (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), re.compile(
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")),
    "api_key": (("sk-",), re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}")),
    "slack_token": (("xox",), re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    "jwt": (("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    "url_password": (("://",), re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)")),
    "assignment": (("pass", "pwd", "secret", "key", "token"), re.compile(
        r"(?i)(?<![A-Za-z0-9_])((?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token)"
        r"\s*[:=]\s*)(['\"]?)[^\s'\",;]{6,}\2")),
}


def redact_secrets(text: str) -> tuple[str, list[str]]:
    """`text` with every secret-looking span replaced, and the kinds found (in pattern order)."""
    found = []
    lowered = text.lower()
    for kind, (markers, pattern) in PATTERNS.items():
        haystack = lowered if kind == "assignment" else text
        if not any(marker in haystack for marker in markers):
            continue
        if kind == "assignment":  # keep the name, hide the value: "password=[REDACTED:assignment]"
            text, n = pattern.subn(lambda m: f"{m.group(1)}[REDACTED:{kind}]", text)
            lowered = text.lower()
        else:
            text, n = pattern.subn(f"[REDACTED:{kind}]", text)
        if n:
            found.append(kind)
    return text, found


def redact_url(url: str) -> str:
    """A server URL without its password or token, in the authority (`user:pw@`, `token@`) or
    as a `password=` parameter, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL at all: hide whatever stands before an '@'
        return re.sub(r"[^/@]*@", "***@", url)
    if parts.username is not None:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        user = "***" if parts.password is None else f"{parts.username}:***"
        url = urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)
