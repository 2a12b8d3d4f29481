"""A real OCI registry (CNCF distribution 2.8, Debian's ``docker-registry``) per test.

``LocalRegistry`` writes a config into a fresh temp dir, serves on ``127.0.0.1:<free port>``
with filesystem storage in that dir, waits for ``GET /v2/`` (200, or 401 with auth), and on
exit terminates (then kills) the process and removes the dir. Modes: anonymous, htpasswd basic
auth (bcrypt), bearer tokens (:class:`~tests.support.tokenserver.TokenServer`), pull-through
mirror (``proxy: remoteurl``), and ``schema1=True`` (accept pushes of signed schema1 manifests).

Fixtures (import them into a conftest: ``from tests.support.registry import registry, ...``):
``registry``, ``basic_registry``, ``token_registry``, ``mirror_registry``, ``registry_factory``.
Without the ``docker-registry`` binary they skip, or fail when ``CI=true``.

Storage layout, for tests that tamper with content (see :meth:`LocalRegistry.corrupt_blob`):
``<root>/docker/registry/v2/blobs/sha256/<hex[:2]>/<hex>/data``; no blob-descriptor cache is
configured, so the registry re-stats the file and serves whatever is there now.

Quirks of distribution 2.8 worth knowing in tests: it answers 404 MANIFEST_UNKNOWN for an OCI
manifest or index unless the request's Accept names that media type (``*/*`` is not enough); a
proxy (mirror) registry refuses pushes with 405 UNSUPPORTED; without ``schema1=True`` a schema 1
PUT fails with 500 UNKNOWN; GET of a Docker schema 2 manifest *by tag* whose Accept lacks the
schema 2 type is answered with a schema 1 rewrite (signed by the registry's own key).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.support.poll import until_sync
from tests.support.prereq import unavailable
from tests.support.tokenserver import TokenServer

REGISTRY_BINARY = "docker-registry"
TEMP_PREFIX = "cri-async-registry-"
DEFAULT_BASIC_USERS: Mapping[str, str] = {"testuser": "testpassword"}

# Never through an HTTP proxy from the environment: everything here is on 127.0.0.1.
_opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({}),
    # Readiness only: a TLS test registry's self-signed certificate is checked by the
    # code under test, not here.
    urllib.request.HTTPSHandler(context=ssl._create_unverified_context()),
)

_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def _kill_leftovers() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        _stop_process(p, grace=1.0)


atexit.register(_kill_leftovers)


def live_processes() -> list[subprocess.Popen[bytes]]:
    """Registry processes started by this module that have not been stopped yet."""
    with _live_lock:
        return [p for p in _live if p.poll() is None]


def require_registry(*, basic: bool = False, token: bool = False) -> str:
    """Path of ``docker-registry``, or skip/fail (see ``prereq.unavailable``). Also checks
    the Python packages the auth modes need."""
    path = shutil.which(REGISTRY_BINARY) or (
        "/usr/bin/docker-registry" if os.access("/usr/bin/docker-registry", os.X_OK) else None
    )
    if path is None:
        unavailable(
            "docker-registry (CNCF distribution) not installed: apt-get install docker-registry"
        )
    if basic:
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            unavailable("python package 'bcrypt' not installed (pip install -e '.[dev]')")
    if token:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            unavailable("python package 'cryptography' not installed (pip install -e '.[dev]')")
    assert path is not None
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (distribution accepts only bcrypt). Cost 4: fast, still valid."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a"))
    return f"{user}:{hashed.decode()}"


@dataclass(frozen=True)
class Proxy:
    """``proxy:`` section: make the registry a pull-through mirror of ``remoteurl``."""

    remoteurl: str
    username: str | None = None
    password: str | None = None


def _pdeathsig_hook() -> Callable[[], None] | None:
    """A preexec_fn making the child die with the forking thread (PR_SET_PDEATHSIG), resolved
    in the parent so the child only makes one libc call between fork and exec."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        return None
    sig = int(signal.SIGKILL)

    def hook() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return hook


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    finally:
        with _live_lock:
            _live.discard(proc)


class RegistryStartError(RuntimeError):
    pass


class LocalRegistry:
    """One ``docker-registry serve`` process with its own storage; see the module doc.

    ``with LocalRegistry() as reg:`` or ``async with LocalRegistry() as reg:``; or
    :meth:`start` / :meth:`stop`. ``reg.url`` is ``http://127.0.0.1:PORT``, ``reg.host`` is
    ``127.0.0.1:PORT`` (what an image reference names).
    """

    def __init__(
        self,
        *,
        basic_auth: Mapping[str, str] | None = None,
        token_server: TokenServer | None = None,
        token_options: Mapping[str, Any] | None = None,
        proxy: str | Proxy | LocalRegistry | None = None,
        schema1: bool = False,
        extra_config: Mapping[str, Any] | None = None,
        binary: str | None = None,
        startup_timeout: float = 20.0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """``tls``: (certificate, key) PEM files to serve HTTPS with. ``basic_auth``: users ->
        passwords (htpasswd). ``token_server``: an existing (maybe not started) server to
        trust; ``token_options``: kwargs to create one (owned: started and stopped with the
        registry). ``proxy``: the upstream to mirror. ``extra_config``: merged (deeply) into
        the generated config."""
        if basic_auth is not None and (token_server is not None or token_options is not None):
            raise ValueError("basic_auth and token auth are exclusive")
        self.basic_auth = dict(basic_auth) if basic_auth is not None else None
        self._token_server = token_server
        self._token_options = dict(token_options) if token_options is not None else None
        self._owns_token_server = False
        if isinstance(proxy, LocalRegistry):
            proxy = Proxy(proxy.url)
        elif isinstance(proxy, str):
            proxy = Proxy(proxy)
        self.proxy = proxy
        self.schema1 = schema1
        self.extra_config = dict(extra_config or {})
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.tls = tls
        self.workdir: Path | None = None
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.config: dict[str, Any] = {}

    # -- addresses -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        if self.port is None:
            raise RuntimeError("registry not started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def token_server(self) -> TokenServer | None:
        return self._token_server

    @property
    def credentials(self) -> tuple[str, str] | None:
        """A valid (user, password): the first basic-auth user, or the token server's first."""
        users = self.basic_auth
        if users is None and self._token_server is not None:
            users = self._token_server.users
        if not users:
            return None
        return next(iter(users.items()))

    @property
    def config_path(self) -> Path:
        return self._dir / "config.yml"

    @property
    def log_path(self) -> Path:
        return self._dir / "registry.log"

    @property
    def storage_root(self) -> Path:
        return self._dir / "storage"

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("registry not started")
        return self.workdir

    def ref(self, repo: str, tag: str = "latest") -> str:
        """An image reference on this registry: ``127.0.0.1:PORT/repo:tag`` (or ``@digest``)."""
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{tag}"

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    # -- storage tampering -----------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.storage_root / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"

    def corrupt_blob(self, digest: str, data: bytes | None = None) -> bytes:
        """Replace a stored blob's bytes (the registry then serves content that does not match
        ``digest``). Default: same length, every byte flipped, so only the digest check can
        notice. Pass ``data`` for a different size (a truncated blob, say). Returns the bytes
        now stored."""
        path = self.blob_path(digest)
        if data is None:
            data = bytes(b ^ 0xFF for b in path.read_bytes())
        path.write_bytes(data)
        return data

    def delete_blob_file(self, digest: str) -> None:
        """Remove a blob's data behind the registry's back (it then answers 404 for it)."""
        shutil.rmtree(self.blob_path(digest).parent)

    # -- config ----------------------------------------------------------------------------

    def _build_config(self) -> dict[str, Any]:
        assert self.workdir is not None and self.port is not None
        cfg: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_root)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"127.0.0.1:{self.port}",
                "secret": secrets.token_hex(16),
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.basic_auth is not None:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(
                "".join(htpasswd_line(u, p) + "\n" for u, p in self.basic_auth.items())
            )
            cfg["auth"] = {"htpasswd": {"realm": "cri-async-test", "path": str(htpasswd)}}
        if self._token_server is not None:
            cfg["auth"] = self._token_server.registry_auth_config()
        if self.proxy is not None:
            section: dict[str, Any] = {"remoteurl": self.proxy.remoteurl}
            if self.proxy.username is not None:
                section["username"] = self.proxy.username
                section["password"] = self.proxy.password or ""
            cfg["proxy"] = section
        if self.schema1:
            cfg["compatibility"] = {"schema1": {"enabled": True}}
        if self.tls is not None:
            cfg["http"]["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        _merge(cfg, self.extra_config)
        return cfg

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self) -> None:
        binary = self.binary or require_registry(
            basic=self.basic_auth is not None,
            token=self._token_server is not None or self._token_options is not None,
        )
        self.workdir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        try:
            if self._token_server is None and self._token_options is not None:
                self._token_server = TokenServer(self.workdir / "tokens", **self._token_options)
                self._owns_token_server = True
            if self._token_server is not None and not self._token_server.running:
                self._token_server.start()
                self._owns_token_server = True
            self.port = free_port()
            self.config = self._build_config()
            # JSON is YAML: no quoting surprises, no PyYAML needed.
            self.config_path.write_text(json.dumps(self.config, indent=2))
            env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
            main = threading.current_thread() is threading.main_thread()
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.workdir,
                    # Die with the test process even if it is SIGKILLed; only from the main
                    # thread, because PDEATHSIG fires when the forking *thread* exits.
                    preexec_fn=_pdeathsig_hook() if main else None,
                )
            with _live_lock:
                _live.add(self.process)
        except BaseException:
            self._cleanup()
            raise

    def _wait_ready(self) -> None:
        process = self.process
        assert process is not None

        def answering() -> bool:
            if process.poll() is not None:
                raise RegistryStartError(
                    f"docker-registry exited with {process.returncode}:\n{self.logs()}"
                )
            try:
                with _opener.open(f"{self.url}/v2/", timeout=1) as resp:
                    return bool(resp.status == 200)
            except urllib.error.HTTPError as e:
                return e.code == 401
            except OSError:
                return False

        try:
            until_sync(answering, timeout=self.startup_timeout, what=f"GET {self.url}/v2/")
        except AssertionError as e:
            raise RegistryStartError(f"docker-registry not ready: {e}:\n{self.logs()}") from None

    def start(self) -> LocalRegistry:
        if self.process is not None:
            return self
        for attempt in range(3):
            self._spawn()
            try:
                self._wait_ready()
                return self
            except BaseException as e:
                busy = "address already in use" in self.logs()
                self.stop()
                if not (busy and attempt < 2 and isinstance(e, RegistryStartError)):
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Terminate (then kill) the registry, stop an owned token server, remove temp files.
        Idempotent."""
        proc, self.process = self.process, None
        try:
            if proc is not None:
                _stop_process(proc)
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._owns_token_server and self._token_server is not None:
            self._token_server.stop()
            self._owns_token_server = False
            if self._token_options is not None:
                self._token_server = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalRegistry:
        if self.process is None:
            # Spawn in the loop's thread (see PDEATHSIG above), wait for readiness off it.
            self._spawn()
            try:
                await asyncio.to_thread(self._wait_ready)
            except BaseException:
                self.stop()
                raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        where = self.url if self.port is not None else "not started"
        return f"<LocalRegistry {where}>"


def _merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


class TokenRegistry(NamedTuple):
    """What the ``token_registry`` fixture yields: ``reg, tokens = token_registry``."""

    registry: LocalRegistry
    tokens: TokenServer

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def credentials(self) -> tuple[str, str]:
        """alice's: may pull and push ``private/*`` and ``public/*``."""
        return ("alice", self.tokens.users["alice"])


class MirrorPair(NamedTuple):
    """What the ``mirror_registry`` fixture yields: ``mirror, upstream = mirror_registry``."""

    mirror: LocalRegistry
    upstream: LocalRegistry


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def registry_factory() -> Iterator[Callable[..., LocalRegistry]]:
    """``make(**LocalRegistry kwargs) -> started LocalRegistry``; all stopped at teardown."""
    started: list[LocalRegistry] = []

    def make(**kw: Any) -> LocalRegistry:
        reg = LocalRegistry(**kw)
        started.append(reg)
        return reg.start()

    require_registry()
    try:
        yield make
    finally:
        errors = []
        for reg in reversed(started):
            try:
                reg.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def registry() -> Iterator[LocalRegistry]:
    """An anonymous registry (pull and push for everyone)."""
    require_registry()
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture
def basic_registry() -> Iterator[LocalRegistry]:
    """htpasswd basic auth; ``reg.credentials`` == ("testuser", "testpassword")."""
    require_registry(basic=True)
    with LocalRegistry(basic_auth=DEFAULT_BASIC_USERS) as reg:
        yield reg


@pytest.fixture
def token_registry() -> Iterator[TokenRegistry]:
    """Bearer-token auth with the default policy of :mod:`tests.support.tokenserver`:
    alice/secret may pull+push ``private/*`` and ``public/*``, bob/hunter2 may pull
    ``private/*``, anonymous may pull ``public/*`` only."""
    require_registry(token=True)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + "tokens-"))
        stack.callback(shutil.rmtree, workdir, True)
        tokens = stack.enter_context(TokenServer(workdir))
        reg = stack.enter_context(LocalRegistry(token_server=tokens))
        yield TokenRegistry(reg, tokens)


@pytest.fixture
def mirror_registry() -> Iterator[MirrorPair]:
    """An anonymous upstream and a pull-through mirror of it (push to the upstream: a proxy
    registry refuses pushes)."""
    require_registry()
    with LocalRegistry() as upstream, LocalRegistry(proxy=upstream) as mirror:
        yield MirrorPair(mirror, upstream)
