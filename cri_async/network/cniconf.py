"""CNI network configuration: loading, choosing and per-plugin request building (no I/O).

Written against the CNI specification (SPEC.md, sections 1 and 3):

* A network configuration is a ``.conflist`` (``name``, ``cniVersion``/``cniVersions``,
  ``plugins``) or, the older form, one plugin object with ``name`` and ``type`` (``.conf``),
  which is wrapped into a one-plugin list.
* The runtime picks the highest version it supports from ``cniVersion`` and ``cniVersions``.
* Each plugin's request is its configuration object with ``name`` and ``cniVersion``
  injected, ``prevResult`` when chaining, ``runtimeConfig`` holding only the capability
  arguments the plugin declares under ``capabilities``, and ``capabilities`` itself removed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONFIG_EXTENSIONS = (".conflist", ".conf", ".json")

# 0.x minors are not compatible with each other; within major 1 the format is compatible
# (SPEC: "backwards and forwards compatible within major versions").
KNOWN_0X = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")

DEFAULT_CONFLIST = """\
{
  "cniVersion": "1.0.0",
  "name": "cri-async",
  "disableCheck": true,
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cri0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.88.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/run/cri-async/cni/ipam"
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true},
      "snat": true
    }
  ]
}
"""
"""cri-async's default network (``cri-async config --cni-default`` prints the same text).

Leases live under /run: after a reboot every pod network namespace is gone, so are they.
``disableCheck`` because portmap (1.1.1) fails CHECK for any pod with a hostPort on an
IPv4-only network ("could not check ipv6 dnat: chain ... not found").
"""


class CNIConfigError(ValueError):
    """A network configuration file that cannot be used (the message says why)."""


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    source: str
    disable_check: bool
    # Every version the file allows that cri-async supports, highest first; cni_version is
    # the first. More than one lets the runtime settle on one the plugins also support.
    cni_versions: tuple[str, ...] = ()


def parse_version(v: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(v)
    if not m:
        raise CNIConfigError(f"cniVersion {v!r} is not a version of the form X.Y.Z")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def version_supported(v: str) -> bool:
    try:
        major, _, _ = parse_version(v)
    except CNIConfigError:
        return False
    return major == 1 or v in KNOWN_0X


def at_least(v: str, minimum: str) -> bool:
    return parse_version(v) >= parse_version(minimum)


def _versions(obj: Mapping[str, Any], where: str) -> tuple[str, ...]:
    offered: list[str] = []
    single = obj.get("cniVersion")
    if single is not None:
        if not isinstance(single, str):
            raise CNIConfigError(f"{where}: cniVersion must be a string")
        offered.append(single)
    many = obj.get("cniVersions")
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(x, str) for x in many):
            raise CNIConfigError(f"{where}: cniVersions must be a list of strings")
        offered.extend(many)
    if not offered:
        raise CNIConfigError(f"{where}: missing cniVersion")
    for v in offered:
        parse_version(v)  # malformed versions are an error, not just "unsupported"
    usable = sorted({v for v in offered if version_supported(v)}, key=parse_version, reverse=True)
    if not usable:
        raise CNIConfigError(f"{where}: unsupported cniVersion {', '.join(offered)}")
    return tuple(usable)


def _check_plugin(p: object, where: str) -> dict[str, Any]:
    if not isinstance(p, dict):
        raise CNIConfigError(f"{where}: a plugin entry is not a JSON object")
    t = p.get("type")
    if not isinstance(t, str) or not t:
        raise CNIConfigError(f"{where}: plugin without a type")
    if "/" in t or "\\" in t or t in (".", ".."):
        raise CNIConfigError(f"{where}: plugin type {t!r} is not a file name")
    caps = p.get("capabilities")
    if caps is not None and not isinstance(caps, dict):
        raise CNIConfigError(f"{where}: capabilities of plugin {t} must be an object")
    return p


def _flag(value: object, key: str, where: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise CNIConfigError(f"{where}: {key} must be true or false")


def load_config(text: str, source: str) -> NetworkConfig:
    """Parse and validate one configuration file (conflist, or a single plugin conf)."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise CNIConfigError(f"{source}: invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CNIConfigError(f"{source}: not a JSON object")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise CNIConfigError(f"{source}: missing network name")
    if not _NAME_RE.match(name):
        raise CNIConfigError(f"{source}: invalid network name {name!r}")
    versions = _versions(obj, source)
    if "plugins" in obj:
        raw = obj["plugins"]
        if not isinstance(raw, list) or not raw:
            raise CNIConfigError(f"{source}: no plugins in network {name}")
        plugins = tuple(_check_plugin(p, source) for p in raw)
        disable_check = _flag(obj.get("disableCheck"), "disableCheck", source)
    elif "type" in obj:
        # A single-plugin .conf: the object is the plugin (name/cniVersion are re-injected).
        plugin = {k: v for k, v in obj.items() if k not in ("name", "cniVersion", "cniVersions")}
        plugins = (_check_plugin(plugin, source),)
        disable_check = False
    else:
        raise CNIConfigError(f"{source}: no plugins in network {name}")
    return NetworkConfig(
        name=name,
        cni_version=versions[0],
        plugins=plugins,
        source=source,
        disable_check=disable_check,
        cni_versions=versions,
    )


def pick_config(files: Mapping[str, str], errors: list[str] | None = None) -> NetworkConfig | None:
    """The first valid configuration by file name order; others' problems go to ``errors``.

    ``files`` maps a path (or bare name) to its text. Names not ending in .conflist, .conf
    or .json are not configurations and are ignored.
    """
    names = [f for f in files if f.endswith(CONFIG_EXTENSIONS)]
    for path in sorted(names, key=lambda f: (os.path.basename(f), f)):
        try:
            return load_config(files[path], path)
        except CNIConfigError as e:
            if errors is not None:
                errors.append(str(e))
    return None


def plugin_stdin(
    net: NetworkConfig,
    plugin: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None,
    runtime_config: Mapping[str, Any],
) -> bytes:
    """The request configuration for one plugin execution (SPEC section 3)."""
    conf: dict[str, Any] = {
        k: v
        for k, v in plugin.items()
        if k not in ("capabilities", "runtimeConfig", "prevResult") and not k.startswith("cni.dev/")
    }
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    caps = plugin.get("capabilities") or {}
    granted = {k: v for k, v in runtime_config.items() if caps.get(k) is True}
    if granted:
        conf["runtimeConfig"] = granted
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    return json.dumps(conf, separators=(",", ":")).encode()


def _addr(text: object) -> str | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return str(ipaddress.ip_interface(text).ip)
    except ValueError:
        return None


def result_ips(result: Mapping[str, Any]) -> tuple[str, ...]:
    """Pod IPs of a CNI result: primary first, IPv4 before IPv6 (what kubelet expects).

    Addresses bound to a host-side interface (one with no ``sandbox``) are not pod IPs.
    Results of spec 0.1/0.2 (``ip4``/``ip6``) are read too.
    """
    found: list[str] = []
    if isinstance(result.get("ips"), list):
        interfaces = result.get("interfaces")
        ifaces = interfaces if isinstance(interfaces, list) else []
        for entry in result["ips"]:
            if not isinstance(entry, dict):
                continue
            idx = entry.get("interface")
            if isinstance(idx, int) and 0 <= idx < len(ifaces):
                iface = ifaces[idx]
                if isinstance(iface, dict) and not iface.get("sandbox"):
                    continue
            a = _addr(entry.get("address"))
            if a:
                found.append(a)
    else:
        for key in ("ip4", "ip6"):
            block = result.get(key)
            if isinstance(block, dict):
                a = _addr(block.get("ip"))
                if a:
                    found.append(a)
    unique = list(dict.fromkeys(found))
    return tuple(sorted(unique, key=lambda a: ipaddress.ip_address(a).version))


def port_mappings_arg(
    mappings: list[tuple[int, int, str, str]],
) -> list[dict[str, Any]]:
    """The ``portMappings`` capability argument from (host, container, protocol, hostIP).

    Only mappings with a host port are published; protocol names are lower-cased.
    """
    out: list[dict[str, Any]] = []
    for host_port, container_port, protocol, host_ip in mappings:
        if host_port <= 0:
            continue
        m: dict[str, Any] = {
            "hostPort": host_port,
            "containerPort": container_port,
            "protocol": (protocol or "tcp").lower(),
        }
        if host_ip:
            m["hostIP"] = host_ip
        out.append(m)
    return out


def cni_args(pairs: Mapping[str, str]) -> str:
    """CNI_ARGS: ``IgnoreUnknown=1`` then ``K=V`` pairs joined by ``;``."""
    for k, v in pairs.items():
        if any(c in k + v for c in ";="):
            raise CNIConfigError(f"CNI argument {k}={v!r} contains ';' or '='")
    return ";".join(["IgnoreUnknown=1", *(f"{k}={v}" for k, v in pairs.items())])
