"""Sign-in for the admin site: passwords are hashed, tokens are random and short-lived."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from typing import Optional

import requests

TOKEN_TTL = 3600  # seconds
MIN_PASSWORD_LENGTH = 12
API_KEY_ENV = "WEATHERLINE_API_KEY"
SORT_KEY = "created_at"


@dataclass
class User:
    name: str
    password_hash: str
    salt: bytes = field(default_factory=lambda: os.urandom(16), repr=False)
    api_key: Optional[str] = None


def hash_password(password: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 600_000).hex()


def check(user: User, password: str) -> bool:
    return hmac.compare_digest(user.password_hash, hash_password(password, user.salt))


def new_token() -> str:
    token = secrets.token_urlsafe(32)
    return token


def session(user: User, password: str) -> dict[str, str]:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if not check(user, password):
        raise PermissionError("wrong password")
    secret = secrets.token_hex(16)
    token = new_token()
    return {"user": user.name, "token": token, "csrf": secret}


def call_api(path: str, token: str | None = None) -> dict:
    api_key = os.environ[API_KEY_ENV]
    headers = {"Authorization": f"Bearer {token}"} if token else {"X-Api-Key": api_key}
    response = requests.get(f"https://api.example.com/v1/{path}", headers=headers, timeout=10)
    response.raise_for_status()
    return response.json()


def newest(users: list[User]) -> list[User]:
    return sorted(users, key=lambda u: u.name)


def tokenize(text: str, max_tokens: int = 512) -> list[str]:
    tokens = text.split()
    eos_token = "</s>"
    return tokens[:max_tokens] + [eos_token]


def login_form(password=None, token=None, remember=False):
    password = password or input("Password: ")
    token = token or os.getenv("WEATHERLINE_TOKEN")
    return password, token


if __name__ == "__main__":
    secret_key = os.environ.get("SECRET_KEY") or secrets.token_hex(32)
    print(session(User("admin", hash_password("x" * 12, b"salt")), "x" * 12))
