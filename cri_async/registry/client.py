"""An OCI distribution client on httpx: manifests and blobs, with auth and mirrors.

Each request goes to the host's endpoints in order (mirrors, then upstream) until one
answers. Blob downloads are streamed into the content store with stall detection (no
bytes for ``stall_timeout`` seconds fails the download, however long it has run) and
resume with a Range request after a broken connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cri_async import __version__
from cri_async.registry import auth
from cri_async.registry.content import BlobWriter
from cri_async.registry.hosts import Endpoint, HostResolver
from cri_async.registry.manifest import ACCEPT, MAX_MANIFEST_BYTES, Descriptor

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("cri_async.registry")
USER_AGENT = f"cri-async/{__version__}"


class RegistryError(Exception):
    """A failure talking to a registry; ``kind`` says which gRPC status fits."""

    kind = "unavailable"


class NotFoundError(RegistryError):
    kind = "not_found"


class AuthFailed(RegistryError):
    kind = "permission_denied"


class StallError(RegistryError):
    kind = "deadline"


class Unreachable(RegistryError):
    """No connection to the endpoint could be made (name resolution, refused, timed out)."""

    kind = "unreachable"


def _tls_failure(e: BaseException) -> bool:
    """Whether a connection failed in the TLS handshake (the host did answer)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True, slots=True)
class Fetched:
    endpoint: Endpoint
    data: bytes
    media_type: str
    digest: str  # Docker-Content-Digest if sent, else ""


class RegistryClient:
    def __init__(
        self,
        hosts: HostResolver,
        *,
        credentials: dict[str, auth.Credentials] | None = None,
        stall_timeout: float = 60.0,
        connect_timeout: float = 15.0,
    ) -> None:
        self.hosts = hosts
        self.tokens = auth.TokenCache()
        self._file_creds = credentials or {}
        self.stall_timeout = stall_timeout
        self._connect_timeout = connect_timeout
        self._clients: dict[tuple[bool, tuple[str, ...]], httpx.AsyncClient] = {}
        # (endpoint base, scope, identity) -> the token cache key learned from a challenge
        self._token_keys: dict[tuple[str, str, str], tuple[str, str, str, str]] = {}

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()

    def credentials_for(self, host: str, given: auth.Credentials | None) -> auth.Credentials:
        return given or self._file_creds.get(host) or auth.Credentials()

    def _client(self, ep: Endpoint) -> httpx.AsyncClient:
        import httpx  # here, not at the top: the CRI server starts serving without it

        key = (ep.skip_verify, ep.ca)
        client = self._clients.get(key)
        if client is None:
            verify: ssl.SSLContext | bool
            if ep.skip_verify:
                verify = False
            else:
                verify = ssl.create_default_context()
                for ca in ep.ca:
                    verify.load_verify_locations(ca)
            client = httpx.AsyncClient(
                verify=verify,
                follow_redirects=True,
                timeout=httpx.Timeout(self.stall_timeout, connect=self._connect_timeout),
                headers={"User-Agent": USER_AGENT},
            )
            self._clients[key] = client
        return client

    async def _token(
        self, ep: Endpoint, ch: auth.Challenge, scope: str, creds: auth.Credentials
    ) -> str:
        import httpx

        realm = ch.params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise AuthFailed(f"{ep.host}: bearer challenge without a usable realm")
        service = ch.params.get("service", "")
        key = (realm, service, scope, creds.identity)
        cached = self.tokens.get(key)
        if cached:
            self._token_keys[(ep.base, scope, creds.identity)] = key
            return cached
        client = self._client(ep)
        try:
            if creds.identity_token:
                resp = await client.post(
                    realm,
                    data={
                        "grant_type": "refresh_token",
                        "refresh_token": creds.identity_token,
                        "service": service,
                        "scope": scope,
                        "client_id": "cri-async",
                    },
                )
            else:
                headers = {"Authorization": creds.basic_header()} if creds.username else {}
                params = {"scope": scope}
                if service:
                    params["service"] = service
                resp = await client.get(realm, params=params, headers=headers)
        except httpx.HTTPError as e:
            raise RegistryError(f"{ep.host}: token server {realm} unreachable: {e}") from None
        if resp.status_code in (401, 403):
            raise AuthFailed(
                f"{ep.host}: authentication failed"
                + (f" for user {creds.username!r}" if creds.username else " (no credentials)")
            )
        if resp.status_code != 200:
            raise AuthFailed(f"{ep.host}: token server answered {resp.status_code}")
        try:
            value, expires = auth.token_from_response(resp.json())
        except (ValueError, auth.AuthError) as e:
            raise AuthFailed(f"{ep.host}: bad token response: {e}") from None
        self.tokens.put(key, value, expires)
        self._token_keys[(ep.base, scope, creds.identity)] = key
        return value

    async def _send(
        self,
        ep: Endpoint,
        repo: str,
        path: str,
        creds: auth.Credentials,
        headers: dict[str, str],
        what: str,
    ) -> httpx.Response:
        """GET ``ep.base + path`` (streamed), answering auth challenges once."""
        import httpx

        scope = f"repository:{repo}:pull"
        client = self._client(ep)
        hdrs = {**ep.headers, **headers}
        if creds.registry_token:
            hdrs["Authorization"] = f"Bearer {creds.registry_token}"
        else:
            key = self._token_keys.get((ep.base, scope, creds.identity))
            tok = self.tokens.get(key) if key else None
            if tok:
                hdrs["Authorization"] = f"Bearer {tok}"
        for attempt in range(2):
            try:
                req = client.build_request("GET", ep.base + path, headers=hdrs)
                resp = await client.send(req, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                kind = RegistryError if _tls_failure(e) else Unreachable
                raise kind(f"{what}: {ep.base}: {type(e).__name__}: {e}") from None
            except httpx.HTTPError as e:
                raise RegistryError(f"{what}: {ep.base}: {type(e).__name__}: {e}") from None
            if resp.status_code != 401:
                break
            await resp.aclose()
            if attempt == 1 or creds.registry_token:
                raise AuthFailed(f"{what}: {ep.host}: authentication failed (401)")
            challenges = auth.parse_challenges(resp.headers.get("www-authenticate", ""))
            bearer = next((c for c in challenges if c.scheme == "bearer"), None)
            if bearer is not None:
                hdrs["Authorization"] = "Bearer " + await self._token(ep, bearer, scope, creds)
            elif any(c.scheme == "basic" for c in challenges) and creds.username:
                hdrs["Authorization"] = creds.basic_header()
            else:
                raise AuthFailed(f"{what}: {ep.host}: authentication required")
        if resp.status_code == 403:
            await resp.aclose()
            raise AuthFailed(f"{what}: {ep.host}: access denied (403)")
        if resp.status_code == 404:
            await resp.aclose()
            raise NotFoundError(f"{what}: not found on {ep.host}")
        if resp.status_code >= 400:
            await resp.aclose()
            raise RegistryError(f"{what}: {ep.base} answered {resp.status_code}")
        return resp

    async def _each(self, host: str, what: str, fn: Callable[[Endpoint], object]) -> object:
        """Try ``fn`` on each endpoint; return the first success, else raise the most
        telling error (auth beats not-found beats unavailable beats unreachable)."""
        errors: list[RegistryError] = []
        for ep in self.hosts.endpoints(host):
            try:
                return await fn(ep)  # type: ignore[misc]
            except RegistryError as e:
                if ep.mirror:
                    log.info(
                        "%s: mirror %s failed (%s); trying the next endpoint", what, ep.base, e
                    )
                errors.append(e)
        rank = {"permission_denied": 0, "not_found": 1, "deadline": 2, "unavailable": 3}
        raise min(errors, key=lambda e: rank.get(e.kind, 4))  # Unreachable: none answered

    async def fetch_manifest(
        self, host: str, repo: str, reference: str, creds: auth.Credentials
    ) -> Fetched:
        what = f"manifest {host}/{repo}:{reference}"

        async def get(ep: Endpoint) -> Fetched:
            import httpx

            resp = await self._send(
                ep, repo, f"/{repo}/manifests/{reference}", creds, {"Accept": ACCEPT}, what
            )
            try:
                data = bytearray()
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_MANIFEST_BYTES:
                        raise RegistryError(f"{what}: larger than {MAX_MANIFEST_BYTES} bytes")
            except httpx.HTTPError as e:
                raise RegistryError(f"{what}: {e}") from None
            finally:
                await resp.aclose()
            return Fetched(
                ep,
                bytes(data),
                resp.headers.get("content-type", ""),
                resp.headers.get("docker-content-digest", ""),
            )

        result = await self._each(host, what, get)
        assert isinstance(result, Fetched)
        return result

    async def fetch_blob(
        self,
        host: str,
        repo: str,
        desc: Descriptor,
        writer: BlobWriter,
        creds: auth.Credentials,
        progress: Callable[[int], None] | None = None,
        attempts: int = 3,
    ) -> None:
        """Stream a blob into ``writer``; the caller commits (verifies) it."""
        what = f"blob {desc.digest}"

        async def get(ep: Endpoint) -> None:
            import httpx

            for attempt in range(attempts):
                await writer.flush()
                headers = {}
                if writer.written:
                    headers["Range"] = f"bytes={writer.written}-"
                resp = await self._send(
                    ep, repo, f"/{repo}/blobs/{desc.digest}", creds, headers, what
                )
                if writer.written and resp.status_code != 206:
                    await resp.aclose()
                    raise RegistryError(f"{what}: {ep.host} cannot resume a download")
                try:
                    await self._stream(resp, writer, progress)
                    return
                except (httpx.HTTPError, StallError) as e:
                    if attempt == attempts - 1:
                        if isinstance(e, StallError):
                            raise
                        raise RegistryError(f"{what}: download failed: {e}") from None
                    log.info("%s: %s; resuming at byte %d", what, e, writer.written)
                finally:
                    await resp.aclose()

        await self._each(host, what, get)

    async def _stream(
        self, resp: httpx.Response, writer: BlobWriter, progress: Callable[[int], None] | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.stall_timeout) as stall:
                async for chunk in resp.aiter_raw(1 << 16):
                    stall.reschedule(loop.time() + self.stall_timeout)
                    await writer.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        except TimeoutError:
            raise StallError(
                f"no data for {self.stall_timeout:g}s from {resp.url.host} (stalled download)"
            ) from None
