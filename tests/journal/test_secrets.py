"""Secrets are redacted before anything is embedded or journaled: the journal is immutable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from journal.journal import Journal
from journal.secrets import RULES, redact_secrets, redact_url
from tests.support import ROOT, TESTS

CORPUS = TESTS / "data" / "secrets"
POSITIVES = [json.loads(line) for line in (CORPUS / "positive.jsonl").read_text().splitlines()]
# the project's files that hold fake secrets on purpose (a test that a secret is refused or hidden)
FAKE_SECRETS = {"tests/data/secrets/positive.jsonl", "tests/journal/test_secrets.py", "tests/journal/test_journal.py",
                "tests/projections/test_projections.py", "tests/soul/agent/test_corpus.py",
                "tests/soul/cli/test_cli.py", "tests/soul/doors/test_peers.py", "tests/system/test_security.py"}

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


@pytest.mark.parametrize("row", POSITIVES, ids=[f"{i}-{row['kind']}" for i, row in enumerate(POSITIVES)])
def test_every_format_in_the_corpus_is_redacted(row: dict[str, str]) -> None:
    redacted, kinds = redact_secrets(row["text"])
    assert row["secret"] not in redacted and f"[REDACTED:{row['kind']}]" in redacted and row["kind"] in kinds
    assert redact_secrets(redacted) == (redacted, [])  # Journal.append redacts again: nothing more to find


def test_the_corpus_covers_every_kind() -> None:
    _, kinds = redact_secrets("\n\n".join(row["text"] for row in POSITIVES))
    assert {row["kind"] for row in POSITIVES} == set(kinds) == {kind for kind, _ in RULES}


@pytest.mark.parametrize("path", sorted(p.name for p in (CORPUS / "clean").iterdir()))
def test_clean_text_and_code_are_left_alone(path: str) -> None:
    text = (CORPUS / "clean" / path).read_text()
    assert redact_secrets(text) == (text, [])


def test_the_projects_own_files_are_left_alone() -> None:
    def git_files(*options: str) -> set[str]:
        return set(subprocess.run(["git", "ls-files", *options], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.splitlines())

    new_sources = {n for n in git_files("--others", "--exclude-standard") if n.endswith((".py", ".md", ".toml", ".json",
                                                                                        ".jsonl", ".yaml", ".sh"))}
    listed = git_files() | new_sources  # tracked, and sources not yet committed (not stray logs)
    found = {}
    for name in sorted(listed - FAKE_SECRETS):
        try:
            text = (ROOT / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):  # binary, or deleted but not yet staged
            continue
        if kinds := redact_secrets(text)[1]:
            found[name] = kinds
    assert len(listed) > 100 and not found  # a file here that holds a fake secret on purpose goes in FAKE_SECRETS


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
    prose = "my keys, all of them:\n\n" + "\n\n".join(row["text"] for row in POSITIVES)
    result = subprocess.run([sys.executable, "-m", "soul", "--app", app_name, "perceive", prose, "--json"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "SOUL_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    kinds = json.loads(result.stdout)["data"]["redacted"]
    assert f"redacted before journaling: {', '.join(kinds)}" in result.stderr
    assert set(kinds) == {row["kind"] for row in POSITIVES}
    with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
        (entry,) = journal.read()
    assert not [row["secret"] for row in POSITIVES if row["secret"] in entry.event.prose]
    assert all(f"[REDACTED:{kind}]" in entry.event.prose for kind in kinds)
