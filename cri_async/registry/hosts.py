"""Where to fetch a registry host's content from: mirrors, upstream, TLS and headers.

Two sources, merged: our own config (``[registry.mirrors."<host>"]``, ``insecure``) and
containerd's ``hosts.toml`` directory layout (``<config_path>/<host>/hosts.toml``, with
``_default/`` for every host), so an operator can reuse a containerd mirror setup as is.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


class HostsConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place to ask; ``base`` is the URL that ``/<repo>/manifests/...`` is appended to."""

    base: str
    host: str  # the registry host this endpoint serves (for credentials)
    mirror: bool = False
    capabilities: frozenset[str] = frozenset({"pull", "resolve"})
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return self.base.split("://", 1)[0]


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _server_for(host: str, insecure: bool, tls: bool) -> str:
    if host == DOCKER_HUB:
        return DOCKER_HUB_SERVER
    scheme = "http" if insecure or (is_loopback(host) and not tls) else "https"
    return f"{scheme}://{host}"


def _v2(url: str, override_path: bool) -> str:
    url = url.rstrip("/")
    return url if override_path or url.endswith("/v2") else url + "/v2"


def _as_tuple(v: object, key: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise HostsConfigError(f"{key}: expected a string or list of strings")


def load_hosts_toml(path: Path, host: str) -> list[Endpoint]:
    """Parse one containerd hosts.toml: mirrors in file order, then ``server``."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise HostsConfigError(f"{path}: {e}") from None
    out: list[Endpoint] = []
    hosts = data.get("host", {})
    if not isinstance(hosts, dict):
        raise HostsConfigError(f"{path}: [host] must be a table")
    for url, h in hosts.items():
        if not isinstance(h, dict):
            raise HostsConfigError(f'{path}: [host."{url}"] must be a table')
        caps = frozenset(_as_tuple(h.get("capabilities", ["pull", "resolve"]), "capabilities"))
        skip = h.get("skip_verify", False)
        headers = h.get("header", {})
        out.append(
            Endpoint(
                base=_v2(url if "://" in url else f"https://{url}", bool(h.get("override_path"))),
                host=host,
                mirror=True,
                capabilities=caps,
                skip_verify=bool(skip),
                ca=_as_tuple(h.get("ca"), f'{path}: host."{url}".ca'),
                headers={str(k): ", ".join(_as_tuple(v, "header")) for k, v in headers.items()},
            )
        )
    server = data.get("server")
    if server is not None:
        if not isinstance(server, str):
            raise HostsConfigError(f"{path}: server must be a string")
        out.append(
            Endpoint(
                base=_v2(server, bool(data.get("override_path"))),
                host=host,
                skip_verify=bool(data.get("skip_verify", False)),
                ca=_as_tuple(data.get("ca"), f"{path}: ca"),
            )
        )
    return out


@dataclass(frozen=True)
class HostResolver:
    config_path: str = ""
    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    insecure: frozenset[str] = frozenset()
    ca: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def endpoints(self, host: str) -> list[Endpoint]:
        """Endpoints for ``host`` in the order to try; the upstream is always last."""
        insecure = host in self.insecure
        eps: list[Endpoint] = []
        for url in self.mirrors.get(host, ()) + self.mirrors.get("*", ()):
            eps.append(
                Endpoint(
                    base=_v2(url, False),
                    host=host,
                    mirror=True,
                    skip_verify=url.split("://", 1)[-1].split("/")[0] in self.insecure,
                )
            )
        upstream: Endpoint | None = None
        if self.config_path:
            root = Path(self.config_path)
            for d in (root / host, root / "_default"):
                f = d / "hosts.toml"
                if f.is_file():
                    found = load_hosts_toml(f, host)
                    eps += [e for e in found if e.mirror]
                    servers = [e for e in found if not e.mirror]
                    if servers:
                        upstream = servers[0]
                    break
        if upstream is None:
            ca = self.ca.get(host, ())
            upstream = Endpoint(
                base=_v2(_server_for(host, insecure, bool(ca)), False), host=host, ca=ca
            )
        if insecure:  # HTTPS without verification first, then plain HTTP
            tls = Endpoint(_v2(f"https://{host}", False), host, skip_verify=True)
            return [*eps, tls, upstream]
        return [*eps, upstream]
