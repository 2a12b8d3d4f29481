"""CNI: attach pod network namespaces by executing plugins directly (platform.md row 4a).

* ``setup`` runs the ``loopback`` plugin on ``lo``, then the network's plugin chain on
  ``eth0`` (ADD, each plugin getting the previous one's result as ``prevResult``).
* Before the first ADD a *pending* cache entry (network config, arguments) is written
  to ``<cache_dir>/<sandbox id>.json``; the final result is added to it, atomically, before
  ``setup`` returns. Teardown needs nothing else, so it works after a restart, with a
  changed configuration, and when the namespace is gone.
* ``teardown`` runs DEL in reverse order with the ADD result as ``prevResult``. When the
  namespace no longer exists, CNI_NETNS is empty (the spec allows it for DEL). The bridge
  plugin (at least up to 1.1.1) then releases the IP but keeps its ``ipMasq`` NAT rules,
  since it learns the addresses from the interface it can no longer see; so after such a
  DEL the NAT rules tagged ``name: "<network>" id: "<sandbox id>"`` are removed here, with
  their private ``CNI-`` chains. The shared ``CNI-HOSTPORT-*`` chains are never touched.
* The bridge plugin turns on ``net.ipv4.ip_forward`` for the whole host.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_async import files, proc
from cri_async.network.cniconf import (
    CONFIG_EXTENSIONS,
    CNIConfigError,
    NetworkConfig,
    at_least,
    cni_args,
    pick_config,
    plugin_stdin,
    port_mappings_arg,
    result_ips,
)

__all__ = [
    "CNI",
    "AttachResult",
    "CNIConfigError",
    "CNIError",
    "NetworkConfig",
    "PortMapping",
]

log = logging.getLogger("cri_async.network.cni")

IFNAME = "eth0"
LOOPBACK_IFNAME = "lo"
LOOPBACK_NETWORK = "cni-loopback"
NOT_READY = "NetworkPluginNotReady"
CACHE_KIND = "cri-async/cni-attachment/v1"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str
    host_ip: str = ""


@dataclass(frozen=True)
class AttachResult:
    ips: tuple[str, ...]  # primary first, IPv4 before IPv6
    raw: dict[str, Any]

    @classmethod
    def from_result(cls, raw: dict[str, Any]) -> AttachResult:
        return cls(result_ips(raw), raw)


class CNIError(Exception):
    """A plugin failed (or could not be run); the message names the plugin and its error."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str = "",
        command: str = "",
        code: int | None = None,
        msg: str = "",
        details: str = "",
    ) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details


@dataclass
class _Slot:
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    users: int = 0


def _is_netns(path: str) -> bool:
    """Whether ``path`` is a live network namespace (a pinned nsfs file, /proc/…/ns/net)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/thread-self/ns/net").st_dev
    except OSError:
        return False


def _plugin_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    parts = (env.get("PATH") or _DEFAULT_PATH).split(":")
    parts += [d for d in _SBIN if d not in parts]  # bridge/portmap run iptables
    env["PATH"] = ":".join(parts)
    return env


def _net_from_entry(entry: dict[str, Any]) -> NetworkConfig:
    n = entry["network"]
    return NetworkConfig(
        name=n["name"],
        cni_version=n["cniVersion"],
        plugins=tuple(n["plugins"]),
        source=n.get("source", ""),
        disable_check=bool(n.get("disableCheck", False)),
        cni_versions=(n["cniVersion"],),
    )


def _loopback_net(version: str) -> NetworkConfig:
    return NetworkConfig(LOOPBACK_NETWORK, version, ({"type": "loopback"},), "", False)


class CNI:
    def __init__(
        self,
        conf_dirs: Sequence[str],
        bin_dirs: Sequence[str],
        cache_dir: str,
        *,
        timeout: float = 60.0,
    ) -> None:
        self.conf_dirs = tuple(conf_dirs)
        self.bin_dirs = tuple(bin_dirs)
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self._net: NetworkConfig | None = None
        self._status: tuple[bool, str, str] = (False, NOT_READY, "CNI configuration not loaded")
        self._locks: dict[str, _Slot] = {}
        self._plugin_versions: dict[tuple[str, int], frozenset[str]] = {}

    # -- configuration ------------------------------------------------------------------

    @property
    def network(self) -> NetworkConfig | None:
        return self._net

    def status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for the CRI NetworkReady condition."""
        return self._status

    def find_plugin(self, plugin_type: str) -> str | None:
        for d in self.bin_dirs:
            p = os.path.join(d, plugin_type)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        return None

    def _scan(self) -> tuple[NetworkConfig | None, tuple[bool, str, str]]:
        errors: list[str] = []
        net = None
        for d in self.conf_dirs:
            files: dict[str, str] = {}
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            except OSError as e:
                errors.append(f"{d}: {e.strerror}")
                continue
            for name in names:
                path = os.path.join(d, name)
                if not name.endswith(CONFIG_EXTENSIONS) or not os.path.isfile(path):
                    continue
                try:
                    with open(path, encoding="utf-8") as f:
                        files[path] = f.read()
                except (OSError, UnicodeDecodeError) as e:
                    errors.append(f"{path}: {e}")
            net = pick_config(files, errors)
            if net is not None:
                break
        where = ", ".join(self.conf_dirs)
        if net is None:
            msg = f"no network config found in {where}"
            if errors:
                msg += ": " + "; ".join(errors)
            return None, (False, NOT_READY, msg)
        wanted = ["loopback", *(p["type"] for p in net.plugins)]
        missing = sorted({t for t in wanted if self.find_plugin(t) is None})
        if missing:
            msg = f"CNI plugin {', '.join(missing)} not found in {':'.join(self.bin_dirs)}"
            return net, (False, NOT_READY, msg)
        return net, (True, "", "")

    async def reload(self) -> None:
        """Re-read the configuration directories (first valid file wins, by name)."""
        net, status = await asyncio.to_thread(self._scan)
        if status != self._status or net != self._net:
            if status[0]:
                assert net is not None
                log.info(
                    "CNI network %s from %s (cniVersion %s)", net.name, net.source, net.cni_version
                )
            else:
                log.warning("CNI not ready: %s", status[2])
        self._net, self._status = net, status

    async def watch(self, interval: float = 2.0) -> None:
        """Poll the configuration directories forever (run as a task; cancel to stop)."""
        while True:
            try:
                await self.reload()
            except Exception:
                log.exception("reloading CNI configuration")
            await asyncio.sleep(interval)

    # -- cache --------------------------------------------------------------------------

    def _cache_path(self, sandbox_id: str) -> Path:
        if not _ID_RE.match(sandbox_id):
            raise CNIError(f"invalid sandbox id {sandbox_id!r} for CNI")
        return self.cache_dir / f"{sandbox_id}.json"

    async def _save(self, sandbox_id: str, entry: dict[str, Any]) -> None:
        path = self._cache_path(sandbox_id)
        data = json.dumps(entry, indent=1).encode()

        def write() -> None:
            self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            files.write_atomic(path, data)

        await asyncio.to_thread(write)

    async def _load(self, sandbox_id: str) -> dict[str, Any] | None:
        path = self._cache_path(sandbox_id)

        def read() -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        data = await asyncio.to_thread(read)
        if data is None:
            return None
        try:
            entry = json.loads(data)
            if entry.get("kind") != CACHE_KIND:
                raise ValueError(f"unknown kind {entry.get('kind')!r}")
            _net_from_entry(entry)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CNIError(f"unreadable CNI cache {path}: {e}") from None
        return dict(entry)

    async def _drop(self, sandbox_id: str) -> None:
        path = self._cache_path(sandbox_id)
        await asyncio.to_thread(lambda: path.unlink(missing_ok=True))

    def cached(self) -> list[str]:
        """Sandbox ids with a cache entry (attached, or a setup/teardown left unfinished)."""
        try:
            names = os.listdir(self.cache_dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))

    @contextlib.asynccontextmanager
    async def _lock(self, sandbox_id: str) -> AsyncIterator[None]:
        """One setup/teardown at a time per sandbox; the lock lives while someone uses it."""
        slot = self._locks.setdefault(sandbox_id, _Slot())
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._locks[sandbox_id]

    # -- plugin execution ---------------------------------------------------------------

    def _binary(self, plugin_type: str) -> str:
        path = self.find_plugin(plugin_type)
        if path is None:
            raise CNIError(
                f"CNI plugin {plugin_type} not found in {':'.join(self.bin_dirs)}",
                plugin=plugin_type,
            )
        return path

    async def _exec(
        self, binary: str, plugin: str, command: str, env: dict[str, str], stdin: bytes
    ) -> bytes:
        try:
            # Its own session, so that a timeout kills the plugin and its helpers.
            done = await proc.run(
                [binary], timeout=self.timeout, input=stdin, env=env, cwd="/", new_session=True
            )
        except proc.CannotRun as e:
            raise CNIError(f"CNI plugin {plugin} ({command}): {e}", plugin=plugin) from None
        except proc.TimedOut:
            raise CNIError(
                f"CNI plugin {plugin} {command} timed out after {self.timeout:g}s",
                plugin=plugin,
                command=command,
            ) from None
        out, err = done.stdout, done.stderr
        if err.strip():
            log.debug("CNI plugin %s %s stderr: %s", plugin, command, err.decode(errors="replace"))
        if done.returncode != 0:
            raise _plugin_error(plugin, command, done.returncode, out, err)
        return out

    async def _invoke(
        self,
        command: str,
        net: NetworkConfig,
        plugin: dict[str, Any],
        prev: dict[str, Any] | None,
        *,
        container_id: str,
        netns: str,
        ifname: str,
        args: str,
        runtime_config: dict[str, Any],
    ) -> dict[str, Any] | None:
        name = plugin["type"]
        binary = self._binary(name)
        env = _plugin_env()
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=container_id,
            CNI_NETNS=netns,
            CNI_IFNAME=ifname,
            CNI_PATH=":".join(self.bin_dirs),
            CNI_ARGS=args,
        )
        stdin = plugin_stdin(net, plugin, prev, runtime_config)
        out = await self._exec(binary, name, command, env, stdin)
        if command != "ADD":
            return None
        try:
            result = json.loads(out)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise CNIError(
                f"CNI plugin {name} ADD returned no result: {out[:200]!r}",
                plugin=name,
                command=command,
            )
        return result

    async def plugin_versions(self, plugin_type: str, probe_version: str) -> frozenset[str]:
        """The spec versions a plugin reports for VERSION (cached per binary and mtime)."""
        binary = self._binary(plugin_type)
        key = (binary, os.stat(binary).st_mtime_ns)
        if key not in self._plugin_versions:
            env = _plugin_env()
            env["CNI_COMMAND"] = "VERSION"
            stdin = json.dumps({"cniVersion": probe_version}).encode()
            out = await self._exec(binary, plugin_type, "VERSION", env, stdin)
            try:
                got = json.loads(out).get("supportedVersions") or []
            except (ValueError, AttributeError):
                got = []
            self._plugin_versions[key] = frozenset(v for v in got if isinstance(v, str))
        return self._plugin_versions[key]

    async def _negotiate(self, net: NetworkConfig) -> NetworkConfig:
        """With several allowed versions, the highest that every plugin also supports."""
        if len(net.cni_versions) <= 1:
            return net
        common: set[str] = set(net.cni_versions)
        for t in {"loopback", *(p["type"] for p in net.plugins)}:
            common &= await self.plugin_versions(t, net.cni_version)
        for v in net.cni_versions:
            if v in common:
                return dataclasses.replace(net, cni_version=v)
        return net

    # -- attach / detach ----------------------------------------------------------------

    async def setup(
        self,
        sandbox_id: str,
        netns: str,
        *,
        pod_name: str,
        pod_namespace: str,
        pod_uid: str,
        port_mappings: Sequence[PortMapping] = (),
        pod_cidr: str = "",
        dns: dict[str, Any] | None = None,
        bandwidth: dict[str, Any] | None = None,
        ips: Sequence[str] = (),
    ) -> AttachResult:
        """Attach the pod's namespace; on failure undo what was added and raise CNIError."""
        if self._net is None:
            await self.reload()
        if self._net is None:
            raise CNIError(self._status[2])
        async with self._lock(sandbox_id):
            if await self._load(sandbox_id) is not None:
                log.warning("CNI: stale attachment for %s; detaching it first", sandbox_id)
                await self._teardown_locked(sandbox_id, None)
            net = await self._negotiate(self._net)
            for t in {"loopback", *(p["type"] for p in net.plugins)}:
                self._binary(t)  # every plugin present before anything is changed
            rc: dict[str, Any] = {}
            pm = port_mappings_arg(
                [(m.host_port, m.container_port, m.protocol, m.host_ip) for m in port_mappings]
            )
            if pm:
                rc["portMappings"] = pm
            if dns:
                rc["dns"] = dns
            if pod_cidr:
                rc["ipRanges"] = [[{"subnet": pod_cidr}]]
            if bandwidth:
                rc["bandwidth"] = bandwidth
            if ips:
                rc["ips"] = list(ips)
            try:
                args = cni_args(
                    {
                        "K8S_POD_NAMESPACE": pod_namespace,
                        "K8S_POD_NAME": pod_name,
                        "K8S_POD_INFRA_CONTAINER_ID": sandbox_id,
                        "K8S_POD_UID": pod_uid,
                    }
                )
            except CNIConfigError as e:
                raise CNIError(str(e)) from None
            entry: dict[str, Any] = {
                "kind": CACHE_KIND,
                "sandboxId": sandbox_id,
                "netns": netns,
                "ifName": IFNAME,
                "network": {
                    "name": net.name,
                    "cniVersion": net.cni_version,
                    "plugins": list(net.plugins),
                    "source": net.source,
                    "disableCheck": net.disable_check,
                },
                "cniArgs": args,
                "runtimeConfig": rc,
                "loopbackResult": None,
                "result": None,
                "complete": False,
            }
            await self._save(sandbox_id, entry)  # pending: a crash from here on is recoverable
            ran = 0  # chain plugins started (the failing one included)
            prev: dict[str, Any] | None = None
            try:
                entry["loopbackResult"] = await self._invoke(
                    "ADD",
                    _loopback_net(net.cni_version),
                    {"type": "loopback"},
                    None,
                    container_id=sandbox_id,
                    netns=netns,
                    ifname=LOOPBACK_IFNAME,
                    args=args,
                    runtime_config={},
                )
                for plugin in net.plugins:
                    ran += 1
                    prev = await self._invoke(
                        "ADD",
                        net,
                        plugin,
                        prev,
                        container_id=sandbox_id,
                        netns=netns,
                        ifname=IFNAME,
                        args=args,
                        runtime_config=rc,
                    )
                assert prev is not None
                entry["result"] = prev
                entry["complete"] = True
                await self._save(sandbox_id, entry)
            except Exception as e:
                await self._rollback(sandbox_id, entry, ran, prev, e)
                if isinstance(e, CNIError):
                    raise
                raise CNIError(f"CNI setup of {sandbox_id} failed: {e}") from e
            result = AttachResult.from_result(prev)
            log.info("CNI: %s attached to %s: %s", sandbox_id, net.name, ", ".join(result.ips))
            return result

    async def _rollback(
        self,
        sandbox_id: str,
        entry: dict[str, Any],
        ran: int,
        partial: dict[str, Any] | None,
        cause: Exception,
    ) -> None:
        """Best-effort DEL of what a failed setup started; the cache goes only if all succeed."""
        plugins = _net_from_entry(entry).plugins[:ran]
        try:
            ok = await self._detach(entry, entry["netns"], plugins, partial, best_effort=True)
        except Exception:
            log.exception("CNI: rollback of %s", sandbox_id)
            ok = False
        if ok:
            await self._drop(sandbox_id)
        else:
            log.warning(
                "CNI: rollback of %s incomplete (after %s); kept its cache", sandbox_id, cause
            )

    async def _delete(
        self,
        entry: dict[str, Any],
        net: NetworkConfig,
        netns: str,
        plugins: Sequence[dict[str, Any]],
        prev: dict[str, Any] | None,
        *,
        best_effort: bool,
    ) -> bool:
        """DEL ``plugins`` in reverse order, then loopback. Returns whether all succeeded."""
        with_prev = at_least(net.cni_version, "0.4.0")  # prevResult on DEL came with 0.4.0
        common = {
            "container_id": entry["sandboxId"],
            "netns": netns,
            "args": entry["cniArgs"],
        }
        calls: list[
            tuple[NetworkConfig, dict[str, Any], dict[str, Any] | None, str, dict[str, Any]]
        ]
        calls = [
            (net, p, prev if with_prev else None, IFNAME, entry["runtimeConfig"])
            for p in reversed(plugins)
        ]
        lb_prev = entry.get("loopbackResult") if with_prev else None
        calls.append(
            (_loopback_net(net.cni_version), {"type": "loopback"}, lb_prev, LOOPBACK_IFNAME, {})
        )
        ok = True
        for n, plugin, p, ifname, rc in calls:
            try:
                await self._invoke("DEL", n, plugin, p, ifname=ifname, runtime_config=rc, **common)
            except CNIError as e:
                if not best_effort:
                    raise
                log.warning("CNI: %s", e)
                ok = False
        return ok

    async def teardown(self, sandbox_id: str, netns: str | None) -> None:
        """Detach using the cached configuration and result. Idempotent.

        ``netns`` None means the cached path. A path that is no longer a namespace is passed
        as an empty CNI_NETNS. The cache entry is removed only when every DEL succeeded.
        """
        async with self._lock(sandbox_id):
            await self._teardown_locked(sandbox_id, netns)

    async def _teardown_locked(self, sandbox_id: str, netns: str | None) -> None:
        entry = await self._load(sandbox_id)
        if entry is None:
            return
        net = _net_from_entry(entry)
        path = entry.get("netns", "") if netns is None else netns
        await self._detach(entry, path, net.plugins, entry.get("result"), best_effort=False)
        await self._drop(sandbox_id)
        log.info("CNI: %s detached from %s", sandbox_id, net.name)

    async def _detach(
        self,
        entry: dict[str, Any],
        netns: str,
        plugins: Sequence[dict[str, Any]],
        prev: dict[str, Any] | None,
        *,
        best_effort: bool,
    ) -> bool:
        """DEL, with an empty CNI_NETNS if ``netns`` is not (any more) a namespace."""
        net = _net_from_entry(entry)
        live = bool(netns) and await asyncio.to_thread(_is_netns, netns)
        ok = await self._delete(
            entry, net, netns if live else "", plugins, prev, best_effort=best_effort
        )
        if not live:
            await self._sweep_nat(net.name, entry["sandboxId"])
        return ok

    async def check(self, sandbox_id: str, netns: str) -> None:
        """CHECK the attachment (a no-op for disableCheck or a pre-0.4.0 network)."""
        entry = await self._load(sandbox_id)
        if entry is None or not entry.get("complete"):
            raise CNIError(f"no CNI attachment recorded for sandbox {sandbox_id}")
        net = _net_from_entry(entry)
        if net.disable_check or not at_least(net.cni_version, "0.4.0"):
            return
        common = {"container_id": sandbox_id, "netns": netns, "args": entry["cniArgs"]}
        await self._invoke(
            "CHECK",
            _loopback_net(net.cni_version),
            {"type": "loopback"},
            entry.get("loopbackResult"),
            ifname=LOOPBACK_IFNAME,
            runtime_config={},
            **common,
        )
        for plugin in net.plugins:
            await self._invoke(
                "CHECK",
                net,
                plugin,
                entry["result"],
                ifname=IFNAME,
                runtime_config=entry["runtimeConfig"],
                **common,
            )

    # -- leftovers of a DEL without a namespace -----------------------------------------

    async def _run(self, *argv: str) -> tuple[int, str]:
        done = await proc.run(argv, timeout=self.timeout, env=_plugin_env())
        return done.returncode, (done.stdout or done.stderr).decode(errors="replace")

    async def _sweep_nat(self, network: str, container_id: str) -> None:
        """Remove NAT rules tagged for this attachment, and their private CNI- chains."""
        tag = f'name: "{network}" id: "{container_id}"'
        search = _plugin_env()["PATH"]
        for save, tool in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
            if shutil.which(save, path=search) is None:
                continue
            try:
                rc, text = await self._run(save, "-t", "nat")
                if rc != 0:
                    continue
                for argv in _nat_cleanup(text, tag):
                    rc, msg = await self._run(tool, "-w", "-t", "nat", *argv)
                    if rc != 0:
                        log.warning("CNI: %s %s: %s", tool, shlex.join(argv), msg.strip())
            except (OSError, TimeoutError) as e:
                log.warning("CNI: sweeping %s NAT rules of %s: %s", tool, container_id, e)


def _nat_cleanup(save_text: str, tag: str) -> list[list[str]]:
    """iptables arguments that delete the rules carrying ``tag`` and the chains they own.

    A chain is removed (flush, then delete) when it is a ``CNI-`` chain other than the shared
    ``CNI-HOSTPORT-*`` ones, it held or was the target of a tagged rule, and nothing else
    jumps to it.
    """
    rules: list[list[str]] = []
    for line in save_text.splitlines():
        if line.startswith("-A "):
            try:
                rules.append(shlex.split(line)[1:])
            except ValueError:
                continue

    def tagged(r: list[str]) -> bool:
        return any(a == "--comment" and i + 1 < len(r) and tag in r[i + 1] for i, a in enumerate(r))

    def target(r: list[str]) -> str:
        for flag in ("-j", "-g"):
            if flag in r and r.index(flag) + 1 < len(r):
                return r[r.index(flag) + 1]
        return ""

    def private(chain: str) -> bool:
        return chain.startswith("CNI-") and not chain.startswith("CNI-HOSTPORT-")

    mine = [r for r in rules if tagged(r)]
    chains = {r[0] for r in mine if private(r[0])} | {target(r) for r in mine if private(target(r))}
    rest = [r for r in rules if not tagged(r)]
    chains = {c for c in chains if not any(target(r) == c and r[0] not in chains for r in rest)}
    out = [["-D", *r] for r in mine if r[0] not in chains]
    for c in sorted(chains):
        out += [["-F", c], ["-X", c]]
    return out


def _plugin_error(plugin: str, command: str, rc: int, out: bytes, err: bytes) -> CNIError:
    code: int | None = None
    msg = details = ""
    try:
        obj = json.loads(out)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        c = obj.get("code")
        code = c if isinstance(c, int) else None
        msg = str(obj.get("msg") or "")
        details = str(obj.get("details") or "")
    if not msg:
        text = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        msg = text[-500:] or f"exit status {rc}"
    text = f"CNI plugin {plugin} failed ({command}): {msg}"
    if details:
        text += f": {details}"
    if code is not None:
        text += f" (code {code})"
    return CNIError(text, plugin=plugin, command=command, code=code, msg=msg, details=details)
