"""CNI: attach pod network namespaces by executing plugins directly.

* ``setup`` runs the ``loopback`` plugin on ``lo``, then the network's plugin chain on
  ``eth0`` (ADD, each plugin getting the previous one's result as ``prevResult``).
* Before the first ADD a *pending* entry (network config, arguments) is written to the
  attachment cache (cnicache.py); the results are added to it, atomically, before ``setup``
  returns. Teardown needs nothing else, so it works after a restart, with a changed
  configuration, and when the namespace is gone.
* ``teardown`` runs DEL in reverse order with the ADD result as ``prevResult``. When the
  namespace no longer exists, CNI_NETNS is empty (the spec allows it for DEL), and the NAT
  rules the bridge plugin then keeps are swept afterwards (natsweep.py).
* The bridge plugin turns on ``net.ipv4.ip_forward`` for the whole host.

Plugin execution is in cniexec.py, configuration parsing in cniconf.py; this module owns
the configuration directories, the per-sandbox serialisation and the order of calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_async.network.cnicache import IFNAME, Attachment, AttachmentCache
from cri_async.network.cniconf import (
    CONFIG_EXTENSIONS,
    CNIConfigError,
    NetworkConfig,
    at_least,
    cni_args,
    pick_config,
    port_mappings_arg,
    result_ips,
)
from cri_async.network.cnierrors import CNIError
from cri_async.network.cniexec import PluginRunner
from cri_async.network.natsweep import sweep_nat
from cri_async.observe import NO_OBSERVER, Observer

__all__ = [
    "CNI",
    "AttachResult",
    "CNIConfigError",
    "CNIError",
    "NetworkConfig",
    "PortMapping",
]

log = logging.getLogger("cri_async.network.cni")

LOOPBACK_IFNAME = "lo"
LOOPBACK_NETWORK = "cni-loopback"
NOT_READY = "NetworkPluginNotReady"
_LOOPBACK_PLUGIN: Mapping[str, Any] = {"type": "loopback"}


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


def _loopback_net(version: str) -> NetworkConfig:
    return NetworkConfig(LOOPBACK_NETWORK, version, (dict(_LOOPBACK_PLUGIN),), "", False)


def _runtime_config(
    port_mappings: Sequence[PortMapping],
    pod_cidr: str,
    dns: dict[str, Any] | None,
    bandwidth: dict[str, Any] | None,
    ips: Sequence[str],
) -> dict[str, Any]:
    """The capability arguments (runtimeConfig) every plugin that declares them gets."""
    runtime_config: dict[str, Any] = {}
    pm = port_mappings_arg(
        [(m.host_port, m.container_port, m.protocol, m.host_ip) for m in port_mappings]
    )
    if pm:
        runtime_config["portMappings"] = pm
    if dns:
        runtime_config["dns"] = dns
    if pod_cidr:
        runtime_config["ipRanges"] = [[{"subnet": pod_cidr}]]
    if bandwidth:
        runtime_config["bandwidth"] = bandwidth
    if ips:
        runtime_config["ips"] = list(ips)
    return runtime_config


class CNI:
    def __init__(
        self,
        conf_dirs: Sequence[str],
        bin_dirs: Sequence[str],
        cache_dir: str,
        *,
        timeout: float = 60.0,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self.conf_dirs = tuple(conf_dirs)
        self.bin_dirs = tuple(bin_dirs)
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self._plugins = PluginRunner(self.bin_dirs, timeout, observer)
        self._cache = AttachmentCache(self.cache_dir)
        self._net: NetworkConfig | None = None
        self._status: tuple[bool, str, str] = (False, NOT_READY, "CNI configuration not loaded")
        self._locks: dict[str, _Slot] = {}

    # -- configuration ------------------------------------------------------------------

    @property
    def network(self) -> NetworkConfig | None:
        return self._net

    def status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for the CRI NetworkReady condition."""
        return self._status

    def find_plugin(self, plugin_type: str) -> str | None:
        return self._plugins.find(plugin_type)

    async def plugin_versions(self, plugin_type: str, probe_version: str) -> frozenset[str]:
        """The spec versions a plugin reports for VERSION (cached per binary and mtime)."""
        return await self._plugins.versions(plugin_type, probe_version)

    def _scan(self) -> tuple[NetworkConfig | None, tuple[bool, str, str]]:
        errors: list[str] = []
        net = None
        for d in self.conf_dirs:
            texts: dict[str, str] = {}
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
                        texts[path] = f.read()
                except (OSError, UnicodeDecodeError) as e:
                    errors.append(f"{path}: {e}")
            net = pick_config(texts, errors)
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

    # -- per-sandbox serialisation ------------------------------------------------------

    def cached(self) -> list[str]:
        """Sandbox ids with a cache entry (attached, or a setup/teardown left unfinished)."""
        return self._cache.ids()

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

    # -- attach -------------------------------------------------------------------------

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
            if await self._cache.load(sandbox_id) is not None:
                log.warning("CNI: stale attachment for %s; detaching it first", sandbox_id)
                await self._teardown_locked(sandbox_id, None)
            net = await self._negotiate(self._net)
            for t in {"loopback", *(p["type"] for p in net.plugins)}:
                self._plugins.binary(t)  # every plugin present before anything is changed
            runtime_config = _runtime_config(port_mappings, pod_cidr, dns, bandwidth, ips)
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
            entry = Attachment.pending(sandbox_id, netns, net, args, runtime_config)
            await self._cache.save(entry)  # pending: a crash from here on is recoverable
            ran = 0  # chain plugins started (the failing one included)
            prev: dict[str, Any] | None = None
            try:
                loopback = await self._plugins.invoke(
                    "ADD",
                    _loopback_net(net.cni_version),
                    _LOOPBACK_PLUGIN,
                    None,
                    container_id=sandbox_id,
                    netns=netns,
                    ifname=LOOPBACK_IFNAME,
                    args=args,
                    runtime_config={},
                )
                entry = dataclasses.replace(entry, loopback_result=loopback)
                for plugin in net.plugins:
                    ran += 1
                    prev = await self._plugins.invoke(
                        "ADD",
                        net,
                        plugin,
                        prev,
                        container_id=sandbox_id,
                        netns=netns,
                        ifname=IFNAME,
                        args=args,
                        runtime_config=runtime_config,
                    )
                assert prev is not None
                entry = dataclasses.replace(entry, result=prev, complete=True)
                await self._cache.save(entry)
            except Exception as e:
                await self._rollback(entry, ran, prev, e)
                if isinstance(e, CNIError):
                    raise
                raise CNIError(f"CNI setup of {sandbox_id} failed: {e}") from e
            result = AttachResult.from_result(prev)
            log.info("CNI: %s attached to %s: %s", sandbox_id, net.name, ", ".join(result.ips))
            return result

    async def _rollback(
        self,
        entry: Attachment,
        ran: int,
        partial: Mapping[str, Any] | None,
        cause: Exception,
    ) -> None:
        """Best-effort DEL of what a failed setup started; the cache goes only if all succeed."""
        sandbox_id = entry.sandbox_id
        plugins = entry.network.plugins[:ran]
        try:
            ok = await self._release(entry, entry.netns, plugins, partial, best_effort=True)
        except Exception:
            log.exception("CNI: rollback of %s", sandbox_id)
            ok = False
        if ok:
            await self._cache.drop(sandbox_id)
        else:
            log.warning(
                "CNI: rollback of %s incomplete (after %s); kept its cache", sandbox_id, cause
            )

    # -- detach -------------------------------------------------------------------------

    async def teardown(self, sandbox_id: str, netns: str | None) -> None:
        """Detach using the cached configuration and result. Idempotent.

        ``netns`` None means the cached path. A path that is no longer a namespace is passed
        as an empty CNI_NETNS. The cache entry is removed only when every DEL succeeded.
        """
        async with self._lock(sandbox_id):
            await self._teardown_locked(sandbox_id, netns)

    async def _teardown_locked(self, sandbox_id: str, netns: str | None) -> None:
        entry = await self._cache.load(sandbox_id)
        if entry is None:
            return
        path = entry.netns if netns is None else netns
        await self._release(entry, path, entry.network.plugins, entry.result, best_effort=False)
        await self._cache.drop(sandbox_id)
        log.info("CNI: %s detached from %s", sandbox_id, entry.network.name)

    async def _release(
        self,
        entry: Attachment,
        netns: str,
        plugins: Sequence[Mapping[str, Any]],
        prev: Mapping[str, Any] | None,
        *,
        best_effort: bool,
    ) -> bool:
        """DEL, with an empty CNI_NETNS if ``netns`` is not (any more) a namespace, then the
        NAT sweep such a DEL needs. Returns whether every DEL succeeded."""
        live = bool(netns) and await asyncio.to_thread(_is_netns, netns)
        ok = await self._delete_chain(
            entry, netns if live else "", plugins, prev, best_effort=best_effort
        )
        if not live:
            await sweep_nat(entry.network.name, entry.sandbox_id, timeout=self.timeout)
        return ok

    async def _delete_chain(
        self,
        entry: Attachment,
        netns: str,
        plugins: Sequence[Mapping[str, Any]],
        prev: Mapping[str, Any] | None,
        *,
        best_effort: bool,
    ) -> bool:
        """DEL ``plugins`` in reverse order, then loopback. Returns whether all succeeded."""
        net = entry.network
        with_prev = at_least(net.cni_version, "0.4.0")  # prevResult on DEL came with 0.4.0
        calls: list[
            tuple[
                NetworkConfig,
                Mapping[str, Any],
                Mapping[str, Any] | None,
                str,
                Mapping[str, Any],
            ]
        ]
        calls = [
            (net, p, prev if with_prev else None, IFNAME, entry.runtime_config)
            for p in reversed(plugins)
        ]
        lb_prev = entry.loopback_result if with_prev else None
        calls.append(
            (_loopback_net(net.cni_version), _LOOPBACK_PLUGIN, lb_prev, LOOPBACK_IFNAME, {})
        )
        ok = True
        for call_net, plugin, call_prev, ifname, runtime_config in calls:
            try:
                await self._plugins.invoke(
                    "DEL",
                    call_net,
                    plugin,
                    call_prev,
                    container_id=entry.sandbox_id,
                    netns=netns,
                    ifname=ifname,
                    args=entry.cni_args,
                    runtime_config=runtime_config,
                )
            except CNIError as e:
                if not best_effort:
                    raise
                log.warning("CNI: %s", e)
                ok = False
        return ok

    # -- check --------------------------------------------------------------------------

    async def check(self, sandbox_id: str, netns: str) -> None:
        """CHECK the attachment (a no-op for disableCheck or a pre-0.4.0 network)."""
        entry = await self._cache.load(sandbox_id)
        if entry is None or not entry.complete:
            raise CNIError(f"no CNI attachment recorded for sandbox {sandbox_id}")
        net = entry.network
        if net.disable_check or not at_least(net.cni_version, "0.4.0"):
            return
        await self._plugins.invoke(
            "CHECK",
            _loopback_net(net.cni_version),
            _LOOPBACK_PLUGIN,
            entry.loopback_result,
            container_id=sandbox_id,
            netns=netns,
            ifname=LOOPBACK_IFNAME,
            args=entry.cni_args,
            runtime_config={},
        )
        for plugin in net.plugins:
            await self._plugins.invoke(
                "CHECK",
                net,
                plugin,
                entry.result,
                container_id=sandbox_id,
                netns=netns,
                ifname=IFNAME,
                args=entry.cni_args,
                runtime_config=entry.runtime_config,
            )
