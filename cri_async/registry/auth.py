"""Registry authentication: credentials, WWW-Authenticate challenges, bearer tokens.

Credentials come from the PullImageRequest (username/password, ``auth``, identity token,
registry token) or, failing that, from a Docker-style credentials file. Tokens are cached
per (realm, service, scope, identity) until shortly before they expire. No secret ever
reaches a log line or an error message.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_async.core.images import AuthConfig

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)\s*,?')


class AuthError(Exception):
    """Authentication failed or was refused; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" | "basic"
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate header (RFC 7235; one or more challenges)."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not m:
            break
        scheme = m.group(1).lower()
        rest = rest[m.end() :]
        params: dict[str, str] = {}
        while True:
            pm = _PARAM.match(rest)
            if not pm or (pm.group(2) == "" and pm.group(3) is None):
                break
            value = pm.group(3) if pm.group(3) is not None else pm.group(2)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            rest = rest[pm.end() :]
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # OAuth2 refresh token
    registry_token: str = ""  # a bearer token to use as is

    @property
    def identity(self) -> str:
        """What distinguishes cached tokens of different users (never a secret)."""
        return self.username or ("<identity-token>" if self.identity_token else "")

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r})"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def from_auth_config(a: AuthConfig) -> Credentials:
    username, password = a.username, a.password
    if a.auth and not username:
        try:
            username, _, password = base64.b64decode(a.auth).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise AuthError("auth: not base64 'user:password'") from None
    return Credentials(username, password, a.identity_token, a.registry_token)


def load_credentials_file(path: str) -> dict[str, Credentials]:
    """A Docker ``config.json``: ``{"auths": {"host": {"auth": b64 | "username", ...}}}``."""
    if not path:
        return {}
    try:
        data: Any = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise AuthError(f"credentials file {path}: {e}") from None
    out: dict[str, Credentials] = {}
    for host, entry in (data.get("auths") or {}).items():
        if not isinstance(entry, dict):
            continue
        key = host.split("://", 1)[-1].rstrip("/").removesuffix("/v1").removesuffix("/v2")
        if key in ("index.docker.io", "registry-1.docker.io"):
            key = "docker.io"
        out[key] = from_auth_config(
            AuthConfig(
                username=str(entry.get("username", "")),
                password=str(entry.get("password", "")),
                auth=str(entry.get("auth", "")),
                identity_token=str(entry.get("identitytoken", "")),
                registry_token=str(entry.get("registrytoken", "")),
            )
        )
    return out


@dataclass(slots=True)
class _Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens by (realm, service, scope, identity); reused until near expiry."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}

    def get(self, key: tuple[str, str, str, str]) -> str | None:
        tok = self._tokens.get(key)
        if tok is None or tok.expires <= time.monotonic():
            self._tokens.pop(key, None)
            return None
        return tok.value

    def put(self, key: tuple[str, str, str, str], value: str, expires_in: float) -> None:
        # Refresh 10 s early so a token never expires mid-request.
        self._tokens[key] = _Token(value, time.monotonic() + max(expires_in - 10, 1))


def token_from_response(body: Any) -> tuple[str, float]:
    if not isinstance(body, dict):
        raise AuthError("token server answered with something that is not a JSON object")
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise AuthError("token server answered without a token")
    expires = body.get("expires_in", 60)
    return token, float(expires) if isinstance(expires, int | float) and expires > 0 else 60.0
