"""A tiny Docker token server (the "bearer" auth flow) for a local CNCF distribution registry.

Implements what distribution 2.8's ``auth: token`` access controller expects:

* ``GET /token?service=S&scope=repository:NAME:pull,push`` (``scope`` repeatable, or several
  space-separated), with optional HTTP Basic credentials; and the OAuth2 form
  ``POST /token`` (``grant_type=password|refresh_token``) that containerd tries first.
* The answer is ``{"token", "access_token", "expires_in", "issued_at"}`` (+ ``refresh_token``
  for ``offline_token=true`` / OAuth2 requests) holding an RS256 JWT whose ``access`` claim
  grants only what the policy (:class:`Grant`) allows; asking for more is not an error, the
  token simply carries less (the registry then answers 401 ``insufficient_scope``).
* Bad credentials are a 401 from the token endpoint itself.

How the registry finds the signing key (distribution v2.8.2 ``registry/auth/token/token.go``,
``VerifySigningKey``): an ``x5c`` header (a cert chain verified against ``rootcertbundle``),
else a ``jwk`` header, else ``kid`` looked up in the trusted keys built from the bundle, keyed
by the libtrust key ID of each certificate's public key: base32 of the first 240 bits of
sha256(DER PKIX public key), in 12 colon-separated groups of 4 (libtrust ``util.go``,
``keyIDFromCryptoKey``). We send ``kid`` by default, ``x5c`` with ``key_hint="x5c"``.
The claim ``aud`` must be a plain string equal to the registry's ``service``; ``iss`` must equal
its ``issuer``; ``exp``/``nbf`` are checked with 60 s of leeway (so an "expired" token is still
accepted for a minute: don't rely on ``expires_in`` < 60 making the registry refuse it).

Every request is recorded in :attr:`TokenServer.requests` for assertions ("the token was
reused", "these scopes were asked for").
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import functools
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

ANONYMOUS = "<anonymous>"
"""Grant subject: requests without credentials."""
AUTHENTICATED = "<authenticated>"
"""Grant subject: any user who gave valid credentials."""
EVERYONE = "<everyone>"
"""Grant subject: anonymous and authenticated alike."""


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()

DEFAULT_SERVICE = "cri-async-test-registry"
DEFAULT_ISSUER = "cri-async-test-token-issuer"


@dataclass(frozen=True)
class Grant:
    """``subject`` may do ``actions`` on resources of ``type`` whose name matches ``pattern``.

    ``pattern`` is an fnmatch glob ("private/*" also matches "private/a/b"); ``subject`` is a
    user name or :data:`ANONYMOUS` / :data:`AUTHENTICATED` / :data:`EVERYONE`.
    """

    pattern: str
    actions: frozenset[str]
    subject: str = EVERYONE
    type: str = "repository"

    def applies(self, user: str | None, rtype: str, name: str) -> bool:
        if rtype != self.type or not fnmatch.fnmatchcase(name, self.pattern):
            return False
        if self.subject == EVERYONE:
            return True
        if self.subject == ANONYMOUS:
            return user is None
        if self.subject == AUTHENTICATED:
            return user is not None
        return user == self.subject


def grant(pattern: str, actions: Iterable[str], subject: str = EVERYONE, **kw: str) -> Grant:
    return Grant(pattern, frozenset(actions), subject, **kw)


DEFAULT_USERS: Mapping[str, str] = {"alice": "secret", "bob": "hunter2"}
"""alice may pull+push(+delete) ``private/*`` and ``public/*``; bob may only pull ``private/*``."""

DEFAULT_GRANTS: tuple[Grant, ...] = (
    grant("public/*", {"pull"}),
    grant("public/*", {"pull", "push", "delete", "*"}, "alice"),
    grant("private/*", {"pull", "push", "delete", "*"}, "alice"),
    grant("private/*", {"pull"}, "bob"),
    grant("catalog", {"*"}, "alice", type="registry"),
)


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    method: str
    path: str
    user: str | None  # the authenticated user (None: anonymous or bad credentials)
    offered_user: str | None  # the user name in the request, valid or not
    service: str | None
    scopes: tuple[str, ...]
    granted: tuple[dict[str, Any], ...]
    status: int
    grant_type: str | None = None
    client_id: str | None = None
    token: str | None = None
    at: float = field(default_factory=time.time)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def libtrust_key_id(public_key: Any) -> str:
    """The libtrust key ID distribution uses to look up a JWT's ``kid``."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    s = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(s[i : i + 4] for i in range(0, len(s), 4))


@functools.cache
def _shared_key() -> RSAPrivateKey:
    """One RSA key per test process: key generation costs ~0.1 s, and tests don't need more."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed_cert(key: RSAPrivateKey, common_name: str = DEFAULT_ISSUER) -> bytes:
    """A self-signed CA certificate for ``key``, as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def sign_jwt(key: RSAPrivateKey, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(sig)


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT, unverified: for assertions in tests."""
    header, claims, _sig = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(claims))


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:name:pull,push`` -> (type, name, actions); names may hold ':' (ports)."""
    rtype, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        return None
    rtype = rtype.split("(", 1)[0]  # "repository(plugin):name:pull"
    return rtype, name, [a for a in actions.split(",") if a]


class TokenServer:
    """A Docker token server on ``http://127.0.0.1:PORT/token``, run in a daemon thread.

    Use as a context manager, or :meth:`start`/:meth:`stop`. ``cert_path`` is the PEM bundle
    to give the registry as ``rootcertbundle`` (written on start into ``workdir``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        grants: Sequence[Grant] | None = None,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        expires_in: int = 300,
        key_hint: str = "kid",
        key: RSAPrivateKey | None = None,
    ) -> None:
        if key_hint not in ("kid", "x5c"):
            raise ValueError("key_hint must be 'kid' or 'x5c'")
        self.workdir = Path(workdir)
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.grants = tuple(DEFAULT_GRANTS if grants is None else grants)
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.key_hint = key_hint
        self.key = key or _shared_key()
        self.cert_pem = self_signed_cert(self.key, issuer)
        self.cert_path = self.workdir / "token-root.pem"
        self.requests: list[TokenRequest] = []
        self.fail_next: list[int] = []
        """Statuses to answer the next requests with instead of a token (pop(0) each)."""
        self._refresh: dict[str, str] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("token server not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> TokenServer:
        if self._httpd is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self.cert_pem)
        handler = type("Handler", (_Handler,), {"server_obj": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def registry_auth_config(self) -> dict[str, Any]:
        """The ``auth:`` section of a distribution config that trusts this server."""
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.cert_path),
            }
        }

    # -- assertions helpers ----------------------------------------------------------------

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def scopes_seen(self) -> list[str]:
        with self._lock:
            return [s for r in self.requests for s in r.scopes]

    def token_requests(
        self, user: str | _Any | None = ANY, status: int | None = 200
    ) -> list[TokenRequest]:
        """Recorded requests, filtered by authenticated ``user`` (None: anonymous; default:
        any) and ``status`` (None: any)."""
        with self._lock:
            reqs = list(self.requests)
        return [
            r
            for r in reqs
            if (isinstance(user, _Any) or r.user == user) and (status is None or r.status == status)
        ]

    # -- policy & tokens -------------------------------------------------------------------

    def allowed(self, user: str | None, rtype: str, name: str) -> set[str]:
        out: set[str] = set()
        for g in self.grants:
            if g.applies(user, rtype, name):
                out |= g.actions
        return out

    def access_for(self, user: str | None, scopes: Iterable[str]) -> list[dict[str, Any]]:
        merged: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            rtype, name, wanted = parsed
            allowed = self.allowed(user, rtype, name)
            acts = merged.setdefault((rtype, name), [])
            for a in wanted:
                if (a in allowed or ("*" in allowed and a != "*")) and a not in acts:
                    acts.append(a)
        return [{"type": t, "name": n, "actions": acts} for (t, n), acts in merged.items() if acts]

    def issue(self, user: str | None, service: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header: dict[str, Any] = {"typ": "JWT", "alg": "RS256"}
        if self.key_hint == "kid":
            header["kid"] = libtrust_key_id(self.key.public_key())
        else:
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            cert = x509.load_pem_x509_certificate(self.cert_pem)
            header["x5c"] = [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()]
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": service,
            "exp": now + self.expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(12),
            "access": access,
        }
        return sign_jwt(self.key, header, claims)

    def _record(self, req: TokenRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _pop_failure(self) -> int | None:
        with self._lock:
            return self.fail_next.pop(0) if self.fail_next else None

    def _new_refresh_token(self, user: str) -> str:
        tok = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[tok] = user
        return tok

    def _refresh_user(self, tok: str) -> str | None:
        with self._lock:
            return self._refresh.get(tok)


class _Handler(BaseHTTPRequestHandler):
    server_obj: TokenServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(
        self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _basic(self) -> tuple[str, str] | None:
        value = self.headers.get("Authorization", "")
        scheme, _, cred = value.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(cred.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ("", "\0invalid")
        return user, password

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        if url.path.rstrip("/") != "/token":
            self._send(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
        self._answer(
            "GET",
            url.path,
            creds=self._basic(),
            refresh=None,
            service=q.get("service", [None])[0],
            scopes=scopes,
            offline=q.get("offline_token", ["false"])[0].lower() == "true",
            grant_type=None,
            client_id=q.get("client_id", [None])[0],
        )

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("latin-1"))
        if url.path.rstrip("/") != "/token":
            self._send(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        grant_type = form.get("grant_type", [""])[0]
        creds: tuple[str, str] | None = None
        refresh: str | None = None
        if grant_type == "password":
            creds = (form.get("username", [""])[0], form.get("password", [""])[0])
        elif grant_type == "refresh_token":
            refresh = form.get("refresh_token", [""])[0]
        else:
            self._send(400, {"error": "unsupported_grant_type"})
            return
        scopes = [s for v in form.get("scope", []) for s in v.split(" ") if s]
        self._answer(
            "POST",
            url.path,
            creds=creds,
            refresh=refresh,
            service=form.get("service", [None])[0],
            scopes=scopes,
            offline=True,
            grant_type=grant_type,
            client_id=form.get("client_id", [None])[0],
        )

    def _answer(
        self,
        method: str,
        path: str,
        *,
        creds: tuple[str, str] | None,
        refresh: str | None,
        service: str | None,
        scopes: list[str],
        offline: bool,
        grant_type: str | None,
        client_id: str | None,
    ) -> None:
        ts = self.server_obj
        offered = creds[0] if creds else None
        user: str | None = None

        def record(
            status: int, granted: Sequence[dict[str, Any]] = (), token: str | None = None
        ) -> None:
            ts._record(
                TokenRequest(
                    method=method,
                    path=path,
                    user=user,
                    offered_user=offered,
                    service=service,
                    scopes=tuple(scopes),
                    granted=tuple(granted),
                    status=status,
                    grant_type=grant_type,
                    client_id=client_id,
                    token=token,
                )
            )

        failure = ts._pop_failure()
        if failure is not None:
            record(failure)
            self._send(failure, {"errors": [{"code": "UNAVAILABLE", "message": "injected"}]})
            return
        if refresh is not None:
            user = ts._refresh_user(refresh)
            if user is None:
                record(401)
                self._send(401, {"error": "invalid_grant"})
                return
        elif creds is not None:
            name, password = creds
            if ts.users.get(name) != password or password == "\0invalid":
                record(401)
                self._send(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                    {"WWW-Authenticate": 'Basic realm="cri-async-test-token"'},
                )
                return
            user = name
        access = ts.access_for(user, scopes)
        token = ts.issue(user, service or ts.service, access)
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": ts.expires_in,
            "issued_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        }
        if offline and user is not None:
            body["refresh_token"] = refresh or ts._new_refresh_token(user)
        record(200, access, token)
        self._send(200, body)
