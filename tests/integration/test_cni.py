"""CNI with the real plugins (containernetworking-plugins in /usr/lib/cni), as root.

Each test owns a bridge ``crit<hex4>``, a network ``crit-<hex4>``, a subnet inside
10.99.0.0/16, a host-local dataDir and a cache dir under tmp_path. The fixture removes
whatever a test leaves (processes, pinned namespaces, its NAT rules by their comment tag, the
bridge); the tests themselves assert that teardown alone leaves nothing. Shared chains
(CNI-HOSTPORT-*) are never flushed or deleted. All traffic stays on loopback and the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cri_async import linux
from cri_async.network.cni import CNI, CNIError, PortMapping
from cri_async.network.natsweep import nat_cleanup
from tests.support.poll import until
from tests.support.prereq import need_root, unavailable

pytestmark = pytest.mark.root

PLUGIN_DIR = "/usr/lib/cni"
PLUGINS = ("bridge", "host-local", "loopback", "portmap")
_used_subnets: set[int] = set()


@pytest.fixture(autouse=True)
def _need_plugins() -> None:
    need_root()
    missing = [p for p in PLUGINS if not os.access(os.path.join(PLUGIN_DIR, p), os.X_OK)]
    missing += [t for t in ("unshare", "nsenter", "ip", "iptables-save") if not shutil.which(t)]
    if missing:
        unavailable(f"needs {', '.join(missing)} (apt-get install containernetworking-plugins)")


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


def _free_subnet() -> int:
    routes = sh("ip", "-4", "route", "show", "table", "all")
    for _ in range(200):
        n = secrets.randbelow(256)
        if n not in _used_subnets and f"10.99.{n}." not in routes:
            _used_subnets.add(n)
            return n
    raise RuntimeError("no free 10.99.x.0/24")


@dataclass
class PodNet:
    tmp: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    n: int = field(default_factory=_free_subnet)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    netns_files: list[Path] = field(default_factory=list)
    cnis: list[CNI] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bridge = f"crit{self.tag}"
        self.name = f"crit-{self.tag}"
        self.subnet = ipaddress.ip_network(f"10.99.{self.n}.0/24")
        self.conf_dir = self.tmp / "net.d"
        self.cache_dir = self.tmp / "cache"
        self.data_dir = self.tmp / "ipam"
        self.conf_dir.mkdir()

    def conflist(self, *extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.subnet)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.data_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
                *extra,
            ],
        }

    def write(self, doc: dict[str, Any]) -> None:
        (self.conf_dir / "10-test.conflist").write_text(json.dumps(doc))

    def cni(self, bin_dirs: tuple[str, ...] = (PLUGIN_DIR,), conf: bool = True) -> CNI:
        if conf and not (self.conf_dir / "10-test.conflist").exists():
            self.write(self.conflist())
        dirs = [str(self.conf_dir)] if conf else [str(self.tmp / "empty")]
        c = CNI(dirs, bin_dirs, str(self.cache_dir), timeout=20)
        self.cnis.append(c)
        return c

    def netns(self, name: str) -> str:
        f = self.tmp / f"ns-{name}"
        f.touch()
        self.netns_files.append(f)
        sh("unshare", f"--net={f}", "true")
        return str(f)

    def drop_netns(self, path: str) -> None:
        linux.umount(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # -- what must be gone after teardown ------------------------------------------------

    def nat_leftovers(self) -> list[str]:
        text = sh("iptables-save")
        return [
            line
            for line in text.splitlines()
            if f"10.99.{self.n}." in line or f'\\"{self.name}\\"' in line
        ]

    def leases(self) -> list[str]:
        d = self.data_dir / self.name
        if not d.is_dir():
            return []
        return sorted(f for f in os.listdir(d) if f not in ("lock",) and not f.startswith("last"))

    def veths(self) -> list[str]:
        out = sh("ip", "-o", "link", "show", "master", self.bridge, check=False)
        return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]

    def assert_clean(self) -> None:
        assert self.nat_leftovers() == []
        assert self.leases() == []
        assert self.veths() == []
        for c in self.cnis:
            assert c.cached() == []

    async def cleanup(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for c in self.cnis:
            for sid in c.cached():
                with contextlib.suppress(Exception):
                    await c.teardown(sid, None)
        for f in self.netns_files:
            self.drop_netns(str(f))
        text = sh("iptables-save", "-t", "nat")
        for argv in nat_cleanup(text, f'name: "{self.name}" id: "'):
            sh("iptables", "-w", "-t", "nat", *argv, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


@pytest.fixture
async def tnet(tmp_path: Path) -> AsyncIterator[PodNet]:
    t = PodNet(tmp_path)
    try:
        yield t
    finally:
        await t.cleanup()
    assert t.bridge not in sh("ip", "-o", "link")


def pod_kw(name: str, **kw: Any) -> dict[str, Any]:
    return {"pod_name": name, "pod_namespace": "cni-test", "pod_uid": f"uid-{name}", **kw}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


async def wait_http(url: str, within: float = 10.0) -> str:
    return await until(
        lambda: asyncio.to_thread(http_get, url, 1.0),
        timeout=within,
        interval=0.1,
        what=f"GET {url}",
        ignore=(OSError,),
    )


@pytest.fixture
def webroot(tmp_path: Path) -> Path:
    d = tmp_path / "www"
    d.mkdir()
    (d / "hello.txt").write_text("hello from pod1\n")
    return d


async def test_two_pods_http_pod_to_pod_and_hostport(tnet: PodNet, webroot: Path) -> None:
    cni = tnet.cni()
    await cni.reload()
    assert cni.status() == (True, "", "")
    ns1, ns2 = tnet.netns("p1"), tnet.netns("p2")
    hp = free_port()
    r1 = await cni.setup("sb-p1", ns1, **pod_kw("p1", port_mappings=[PortMapping(hp, 8080, "TCP")]))
    r2 = await cni.setup("sb-p2", ns2, **pod_kw("p2"))
    ip1, ip2 = r1.ips[0], r2.ips[0]
    assert len(r1.ips) == len(r2.ips) == 1 and ip1 != ip2
    assert ipaddress.ip_address(ip1) in tnet.subnet and ipaddress.ip_address(ip2) in tnet.subnet
    assert tnet.leases() == sorted([ip1, ip2])
    assert len(tnet.veths()) == 2
    # loopback is up in the pod, eth0 has the address
    links = sh("nsenter", f"--net={ns1}", "ip", "-o", "addr", "show")
    assert "lo    inet 127.0.0.1/8" in links and f"eth0    inet {ip1}/24" in links

    server = subprocess.Popen(
        [
            *("nsenter", f"--net={ns1}", sys.executable, "-m", "http.server", "8080"),
            *("--bind", "0.0.0.0", "--directory", str(webroot)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tnet.procs.append(server)
    body = "hello from pod1\n"
    assert await wait_http(f"http://{ip1}:8080/hello.txt") == body  # host -> pod IP
    probe = (
        "import urllib.request,sys;"
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"
    )
    got = sh("nsenter", f"--net={ns2}", sys.executable, "-c", probe, f"http://{ip1}:8080/hello.txt")
    assert got == body  # pod2 -> pod1 over the bridge
    assert await wait_http(f"http://127.0.0.1:{hp}/hello.txt") == body  # hostPort via portmap
    assert tnet.nat_leftovers() != []  # the rules exist while attached...

    await cni.teardown("sb-p1", ns1)
    await cni.teardown("sb-p2", ns2)
    tnet.assert_clean()  # ...and are gone after teardown
    with pytest.raises(OSError, match=r"refused|timed out"):
        http_get(f"http://127.0.0.1:{hp}/hello.txt", timeout=1)


async def test_teardown_after_restart_and_with_the_netns_gone(tnet: PodNet) -> None:
    cni = tnet.cni()
    ns_a, ns_b = tnet.netns("a"), tnet.netns("b")
    pm = [PortMapping(free_port(), 80, "TCP")]
    await cni.setup("sb-a", ns_a, **pod_kw("a", port_mappings=pm))
    rb = await cni.setup("sb-b", ns_b, **pod_kw("b", port_mappings=pm[:0]))
    assert sorted(cni.cached()) == ["sb-a", "sb-b"]

    # A "restart": a new object that has no configuration at all, only the cache.
    fresh = tnet.cni(conf=False)
    await fresh.reload()
    assert not fresh.status()[0]
    assert sorted(fresh.cached()) == ["sb-a", "sb-b"]
    await fresh.teardown("sb-a", ns_a)

    # The pod's namespace is unpinned first (its veth dies with it): DEL without CNI_NETNS.
    tnet.drop_netns(ns_b)
    assert any(rb.ips[0] in line for line in tnet.nat_leftovers())
    await fresh.teardown("sb-b", ns_b)
    assert tnet.nat_leftovers() == []  # incl. the bridge's ipMasq rules (see natsweep.py)
    await fresh.teardown("sb-b", ns_b)  # idempotent
    await fresh.teardown("sb-a", None)
    tnet.assert_clean()


async def test_check_on_ipv4_only(tnet: PodNet) -> None:
    cni = tnet.cni()
    ns1, ns2 = tnet.netns("c1"), tnet.netns("c2")
    await cni.setup("sb-c1", ns1, **pod_kw("c1"))
    await cni.check("sb-c1", ns1)  # loopback, bridge and portmap CHECK pass without ports
    await cni.setup(
        "sb-c2", ns2, **pod_kw("c2", port_mappings=[PortMapping(free_port(), 80, "TCP")])
    )
    # portmap 1.1.1 CHECK with a hostPort fails on IPv4-only networks ("could not check
    # ipv6 dnat"), which is why the default network sets disableCheck.
    with pytest.raises(CNIError, match=r"portmap failed \(CHECK\).*ipv6"):
        await cni.check("sb-c2", ns2)
    await cni.teardown("sb-c1", ns1)
    await cni.teardown("sb-c2", ns2)
    tnet.assert_clean()


BROKEN = """#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","code":100,"msg":"broken on purpose","details":"test plugin"}'
  exit 1
fi
exit 0
"""


async def test_broken_plugin_fails_cleanly(tnet: PodNet) -> None:
    bindir = tnet.tmp / "bin"
    bindir.mkdir()
    (bindir / "broken").write_text(BROKEN)
    (bindir / "broken").chmod(0o755)
    tnet.write(tnet.conflist({"type": "broken"}))
    cni = tnet.cni(bin_dirs=(str(bindir), PLUGIN_DIR))
    ns = tnet.netns("x")
    with pytest.raises(CNIError) as ei:
        await cni.setup(
            "sb-x", ns, **pod_kw("x", port_mappings=[PortMapping(free_port(), 80, "TCP")])
        )
    assert (
        str(ei.value) == "CNI plugin broken failed (ADD): broken on purpose: test plugin (code 100)"
    )
    tnet.assert_clean()
    # the pod namespace is back to loopback only (the bridge's DEL removed eth0)
    links = sh("nsenter", f"--net={ns}", "ip", "-o", "link", "show")
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    # A namespace that does not exist: the loopback plugin fails, nothing is left either.
    with pytest.raises(CNIError, match=r"CNI plugin loopback failed \(ADD\)"):
        await cni.setup("sb-y", str(tnet.tmp / "no-such-netns"), **pod_kw("y"))
    tnet.assert_clean()


def host_veths() -> set[str]:
    out = sh("ip", "-o", "link", "show", "type", "veth")
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line}


async def test_twenty_cycles_leak_nothing(tnet: PodNet) -> None:
    cni = tnet.cni()
    ns = tnet.netns("cyc")
    hp = free_port()
    veths_before = host_veths()
    seen: set[str] = set()
    for i in range(20):
        r = await cni.setup(
            f"sb-cyc{i}", ns, **pod_kw(f"cyc{i}", port_mappings=[PortMapping(hp, 80, "TCP")])
        )
        seen.add(r.ips[0])
        assert len(tnet.leases()) == 1
        await cni.teardown(f"sb-cyc{i}", ns)
    assert len(seen) >= 2  # host-local moves on through the range rather than reusing at once
    tnet.assert_clean()
    # No veth of ours left on the host (others may come and go meanwhile: compare names).
    assert host_veths() - veths_before == set()
    assert sh("nsenter", f"--net={ns}", "ip", "-o", "link", "show").count("\n") == 1
