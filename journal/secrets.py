"""Secrets never reach the journal: the journal is immutable, so redaction must come first.

`redact_secrets(text)` replaces what looks like a credential with `[REDACTED:<kind>]` and says which
kinds it found. Entry points that embed prose call it before embedding, so the vector does not
carry the secret either; `Journal.append` calls it again on every event's prose as the last
line of defence. The rules are high-precision shapes, after the formats gitleaks keeps: provider
tokens known by their prefix (cloud, VCS, package registries, payments, chat and webhooks, model
providers), PEM private keys, JWTs, passwords in URLs, `Authorization:` headers and bearer tokens,
and values whose name says they are secret (`*_API_KEY=`, `*_TOKEN:`, `"secret": ...`,
`password = ...`, in shell, dotenv, JSON, YAML or code). Anything else that is secret must not be
pasted in. tests/data/secrets/ holds a fake example of each format, and text that must be left alone.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# the last word of a secret's name; a `key` needs an owner before it that makes it secret (API_KEY,
# secretAccessKey, AccountKey), so that sort_key= or "key": are left alone
_NAMES = ("pass(?:word|wd|phrase)?", "pwd", "secret", "token", "key")
_KEY_OWNER = re.compile(r"(?:api|access|secret|private|client|master|signing|encryption|storage|account)[_.-]?\Z")
_SEPARATOR = r"(?:\\?[\"'`])?[ \t]*(?:=>|:=|[:=])[ \t]*(?!=)"  # `NAME=`, `"name": `, `name => `, `\"name\":`
# a quoted value, or a bare one up to what ends a value in code; a bare one followed by `(` or `[` is a call
_VALUE = r"(?P<value>\\?\"[^\"\s\\]{6,}\\?\"|\\?'[^'\s\\]{6,}\\?'|[^\s'\"`,;()\[\]{}<>\\]{6,}+(?![(\[]))"

# (kind, pattern), first rule first where matches overlap. Each pattern starts with a literal, so re
# finds its candidates with a fast substring search (a pattern starting with `\b`, a lookbehind or
# a character class costs ~50x more: it is tried at every position). A pattern with a `value` group
# hides only that group (the name stays, so the text still reads); with a `name` group it is matched
# against the lowered text, as names are case-insensitive.
RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((kind, re.compile(rule, re.ASCII | re.DOTALL)) for kind, rule in (
    ("private_key", r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
                    r"(?:[\w\s+/=:,.\\]|-(?!----)){16,}?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"),
    ("aws_access_key", r"A(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z0-9]{16}\b"),
    ("google_api_key", r"AIza[\w-]{35,}"),
    ("atlassian_token", r"AT(?:BB|ATT3|CTT3)[\w=-]{24,}"),  # Bitbucket app passwords, Atlassian API tokens
    ("github_token", r"gh[pousr]_[A-Za-z0-9]{36,255}"),
    ("github_token", r"github_pat_\w{22,255}"),
    ("gitlab_token", r"gl(?:pat|dt|rt|ptt|cbt|ft|imt|oas|soat|agent|ffct)-[\w-]{20,}"),
    ("huggingface_token", r"hf_[A-Za-z0-9]{34,}"),
    ("api_key", r"sk-[\w-]{20,}"),  # OpenAI sk-…, sk-proj-…; Anthropic sk-ant-…
    ("stripe_key", r"sk_(?:live|test)_[A-Za-z0-9]{10,}"),
    ("stripe_key", r"rk_(?:live|test)_[A-Za-z0-9]{10,}"),
    ("slack_token", r"x(?:ox[abeoprs]|app)-[A-Za-z0-9-]{10,}"),
    ("webhook_url", r"hooks\.slack\.com/(?:services|workflows|triggers)/[\w+/-]{20,}"),
    ("webhook_url", r"discord(?:app)?\.com/api/webhooks/\d+/[\w-]{20,}"),
    ("twilio_key", r"SK[0-9a-fA-F]{32}\b"),
    ("sendgrid_key", r"SG\.[\w-]{16,}\.[\w-]{16,}"),
    ("npm_token", r"npm_[A-Za-z0-9]{36,}"),
    ("pypi_token", r"pypi-Ag[\w-]{50,}"),
    ("docker_token", r"dckr_[po]at_[\w-]{20,}"),
    ("jwt", r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}"),
    ("url_password", r"://[^/\s:@]+:(?P<value>[^/\s@]+)@"),
    ("auth_header", r"(?P<name>authorization)(?:\\?[\"'`])?[ \t]*[:=][ \t]*[\"'`]?"
                    r"(?:(?:bearer|basic|token|bot|digest|negotiate)[ \t]+)?(?P<value>[^\s'\"`,;\[\\]{8,})"),
    ("auth_header", r"(?P<name>bearer)[ \t]+(?P<value>[\w.~+/-]{20,}=*)"),
    *(("assignment", rf"(?P<name>{name}){_SEPARATOR}{_VALUE}") for name in _NAMES),  # one each: ~5x faster
))
_KINDS = list(dict.fromkeys(kind for kind, _ in RULES))
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_WORD = _ALNUM | {"_"}
# what stands for a secret without being one: a number, code (`-index`), a placeholder (`$TOKEN`, `${X}`,
# `<key>`, `{x}`, `%(pw)s`, `:class:`, `***`, `hf_...`, `xxxxxx`, `CHANGE_ME`, `your-api-key-here`, `my-secret`),
# a colour, a path, an address, a tokenizer's special token (`<|eos|>`, `|SEP|`)
_PLACEHOLDER = re.compile(
    r"\d[\d_.]*|#[0-9a-fA-F]{3,8}|[-$<{%*\[:].*|(.)\1+|[A-Z_.]+|.*(?:\*\*\*|\.\.\.|[<>|]).*"
    r"|(?i:your|my[-_]|change|replace|placeholder|dummy|example|sample).*"
    r"|(?:~|\.\.?)?/(?:[a-z0-9_.-]+|[A-Z][a-z]+)(?:/.*)?|.*://.*", re.ASCII | re.DOTALL)
# a value that names itself, a word of it saying what it stands for: fal-ai-api-key, X-Api-Token,
# entity_mask2_token, Ed25519PrivateKey (a type)
_SELF_NAMED = re.compile(r"(?:[\w.-]*[^a-zA-Z])?(?:key|token|secret|pass(?:word|wd)?|pwd|KEY|TOKEN|SECRET|PASS(?:WORD)?)"
                         r"(?:[^a-zA-Z][\w.-]*)?|[\w.-]*(?:Key|Token|Secret|Pass(?:word)?)(?:[^a-z][\w.-]*)?",
                         re.ASCII)
# letters that read as words are code (an identifier, an attribute, a type: self.password, getAuthToken,
# CertificateIssuerPrivateKeyTypes, HTMLParser); letters whose case changes at random are not
_WORDS = re.compile(r"(?:[A-Za-z](?![A-Za-z])|[A-Z]?[a-z]{2,}|[A-Z]{2,}(?![a-z])|[A-Z][a-z](?![a-z])|[_.])+")


def _placeholder(value: str) -> bool:
    """`value` stands for a secret without being one (tokens and keys are ASCII)."""
    return not value.isascii() or bool(_PLACEHOLDER.fullmatch(value) or _SELF_NAMED.fullmatch(value))


def _starts_word(text: str, start: int, word: frozenset[str] = _WORD) -> bool:
    """`text[start:]` does not continue a word (`\\n` and other escapes before it count as a break)."""
    return start == 0 or text[start - 1] not in word or (start >= 2 and text[start - 2] == "\\")


def _named_value(m: re.Match[str], text: str, value: str) -> bool:
    """Whether `value`, named by `m`'s name, is a secret: the name ends the word it is in
    (OPENAI_API_KEY, clientSecret, not OLDPWD or sort_key), the value is neither code nor a placeholder."""
    name = m.start("name")
    if m.group("name") == "key":  # a key is secret when its owner says so
        if not (owner := _KEY_OWNER.search(m.string, max(0, name - 11), name)):
            return False
        name = owner.start()
    glued = m.group("name") in ("password", "passwd", "passphrase")  # PGPASSWORD, dbpassword: unmistakable
    if not (glued or _starts_word(text, name, _ALNUM) or (text[name - 1].islower() and text[name].isupper())):
        return False
    if _placeholder(value):
        return False
    env = text[name:m.end("name")].isupper() and text[m.end("name")] == "="  # NAME=value: shell, dotenv
    quoted = m.group("value")[-1] in "\"'"  # a literal: "correct-horse-battery" is a password, read-only a word
    return env or not _WORDS.fullmatch(value if quoted else value.replace("-", "_"))


def _secret(rule: re.Pattern[str], m: re.Match[str], text: str) -> tuple[int, int] | None:
    """The span of `m` to hide, or None if it is no secret after all."""
    if "value" not in rule.groupindex:
        return m.span() if m.group()[0] not in _WORD or _starts_word(text, m.start()) else None
    start, end = m.span("value")
    value = text[start:end].strip("\\\"'`")
    if "name" in rule.groupindex:
        return (start, end) if _named_value(m, text, value) else None
    return None if _placeholder(value) else (start, end)


def redact_secrets(text: str) -> tuple[str, list[str]]:
    """`text` with every secret-looking span replaced, and the kinds found (in rule order)."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower to two ('İ'): keep the offsets aligned
        lowered = "".join(c if len(c.lower()) > 1 else c.lower() for c in text)
    hidden: list[list] = []  # [start, end, kind]
    for kind, rule in RULES:
        for m in rule.finditer(lowered if "name" in rule.groupindex else text):
            if not (span := _secret(rule, m, text)):
                continue
            start, end = span
            for h in hidden:  # an earlier rule's span wins, widened (`api_key="sk-…"`: the sk- rule, quotes too)
                if start < h[1] and h[0] < end:
                    h[0], h[1] = min(h[0], start), max(h[1], end)
                    break
            else:
                hidden.append([start, end, kind])
    if not hidden:
        return text, []
    pieces, found, at = [], set(), 0
    for start, end, kind in sorted(hidden):
        if start < at:  # widening made two spans overlap
            at = max(at, end)
            continue
        pieces += [text[at:start], f"[REDACTED:{kind}]"]
        found.add(kind)
        at = end
    return "".join([*pieces, text[at:]]), [kind for kind in _KINDS if kind in found]


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
