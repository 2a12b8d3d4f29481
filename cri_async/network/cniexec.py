"""Running CNI plugin binaries: lookup in the plugin directories, the environment and
stdin of one execution, the deadline, and the VERSION probe.

A plugin runs in a session of its own, so that a timeout or a cancellation kills it and
the helpers it started (iptables, ...). Its stdout is the result (ADD) or the error object.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from cri_async import proc
from cri_async.network.cniconf import NetworkConfig, plugin_stdin
from cri_async.network.cnierrors import CNIError, plugin_error
from cri_async.observe import NO_OBSERVER, Observer

log = logging.getLogger("cri_async.network.cni")

_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def plugin_env() -> dict[str, str]:
    """Our environment without CNI_* variables, with the sbin directories on PATH (the
    bridge and portmap plugins run iptables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    parts = (env.get("PATH") or _DEFAULT_PATH).split(":")
    parts += [d for d in _SBIN if d not in parts]
    env["PATH"] = ":".join(parts)
    return env


class PluginRunner:
    """Finds and executes plugins from ``bin_dirs``, each run bounded by ``timeout``."""

    def __init__(
        self, bin_dirs: Sequence[str], timeout: float, observer: Observer = NO_OBSERVER
    ) -> None:
        self.bin_dirs = tuple(bin_dirs)
        self.timeout = timeout
        self.observer = observer
        self._versions: dict[tuple[str, int], frozenset[str]] = {}

    def find(self, plugin_type: str) -> str | None:
        for d in self.bin_dirs:
            p = os.path.join(d, plugin_type)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        return None

    def binary(self, plugin_type: str) -> str:
        """The plugin's path; CNIError naming the directories if there is none."""
        path = self.find(plugin_type)
        if path is None:
            raise CNIError(
                f"CNI plugin {plugin_type} not found in {':'.join(self.bin_dirs)}",
                plugin=plugin_type,
            )
        return path

    async def _run(
        self, binary: str, plugin: str, command: str, env: dict[str, str], stdin: bytes
    ) -> bytes:
        try:
            with self.observer.invocation("cni", plugin, command):
                done = await proc.run(
                    [binary], timeout=self.timeout, input=stdin, env=env, cwd="/", new_session=True
                )
                if done.returncode != 0:
                    raise plugin_error(plugin, command, done.returncode, done.stdout, done.stderr)
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
        return out

    async def invoke(
        self,
        command: str,
        net: NetworkConfig,
        plugin: Mapping[str, Any],
        prev: Mapping[str, Any] | None,
        *,
        container_id: str,
        netns: str,
        ifname: str,
        args: str,
        runtime_config: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Run ``command`` (ADD, DEL, CHECK) of one plugin; the result for ADD, else None."""
        name = plugin["type"]
        binary = self.binary(name)
        env = plugin_env()
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=container_id,
            CNI_NETNS=netns,
            CNI_IFNAME=ifname,
            CNI_PATH=":".join(self.bin_dirs),
            CNI_ARGS=args,
        )
        stdin = plugin_stdin(net, plugin, prev, runtime_config)
        out = await self._run(binary, name, command, env, stdin)
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

    async def versions(self, plugin_type: str, probe_version: str) -> frozenset[str]:
        """The spec versions a plugin reports for VERSION (cached per binary and mtime)."""
        binary = self.binary(plugin_type)
        key = (binary, os.stat(binary).st_mtime_ns)
        if key not in self._versions:
            env = plugin_env()
            env["CNI_COMMAND"] = "VERSION"
            stdin = json.dumps({"cniVersion": probe_version}).encode()
            out = await self._run(binary, plugin_type, "VERSION", env, stdin)
            try:
                got = json.loads(out).get("supportedVersions") or []
            except (ValueError, AttributeError):
                got = []
            self._versions[key] = frozenset(v for v in got if isinstance(v, str))
        return self._versions[key]
