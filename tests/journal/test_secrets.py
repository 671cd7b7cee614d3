"""Secrets are redacted before anything is embedded or journaled: the journal is immutable."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from journal.journal import Journal
from journal.secrets import redact_secrets, redact_url

SECRETS = {
    "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "a1B2" * 9,
    "api_key": "sk-ant-api03-" + "Zx9_" * 8,
    "slack_token": "xoxb-1234567890-abcdefghij",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "url_password": "alice:s3cr3tpass",
}


@pytest.mark.parametrize("kind", SECRETS)
def test_each_kind_is_redacted(kind: str) -> None:
    secret = SECRETS[kind]
    text = f"here is mine: {secret} (do not share)"
    if kind == "url_password":
        text = f"connect to nats://{secret}@db.example:4222 now"
    redacted, kinds = redact_secrets(text)
    assert kinds == [kind]
    assert secret not in redacted and f"[REDACTED:{kind}]" in redacted


def test_assignments_keep_the_name_and_hide_the_value() -> None:
    redacted, kinds = redact_secrets('config: PASSWORD = "correct-horse-battery" and api_key: abcdef123456')
    assert kinds == ["assignment"]
    assert redacted == "config: PASSWORD = [REDACTED:assignment] and api_key: [REDACTED:assignment]"


@given(st.text(alphabet=st.characters(codec="ascii", categories=["L", "N", "Zs"]), max_size=300))
def test_plain_prose_is_left_alone(text: str) -> None:
    assert redact_secrets(text) == (text, [])


def test_code_without_secrets_is_left_alone() -> None:
    code = "def check(password: str) -> bool:\n    return verify(password, stored_hash)\n"
    assert redact_secrets(code) == (code, [])


@pytest.mark.parametrize("url, shown", [
    ("nats://alice:s3cret@127.0.0.1:4222", "nats://alice:***@127.0.0.1:4222"),
    ("nats://tok3n@host:4222", "nats://***@host:4222"),
    ("postgresql://soul:pw@db:5432/soul?sslmode=require", "postgresql://soul:***@db:5432/soul?sslmode=require"),
    # a user without a password may be a token: hidden too
    ("postgresql://soul@/soul?host=/tmp&password=pw&port=5432", "postgresql://***@/soul?host=/tmp&password=***&port=5432"),
    ("host=db password=pw user=soul", "host=db password=*** user=soul"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
])
def test_urls_are_shown_without_their_password_or_token(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_perceive_journals_no_secret(nats_url: str, app_name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = SECRETS["api_key"]
    result = subprocess.run([sys.executable, "-m", "soul", "--app", app_name, "perceive", f"my key is {key}", "--json"],
                            capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "SOUL_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "redacted before journaling: api_key" in result.stderr
    assert json.loads(result.stdout)["data"]["redacted"] == ["api_key"]
    with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
        (entry,) = journal.read()
    assert key not in entry.event.prose and "[REDACTED:api_key]" in entry.event.prose
