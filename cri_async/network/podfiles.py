"""The files a pod's containers share: /etc/resolv.conf, /etc/hosts, /etc/hostname. Pure."""

from __future__ import annotations

from cri_async.core.model import DNSConfig


def resolv_conf(dns: DNSConfig | None, host_resolv: str) -> str:
    """kubelet passes the full DNS config (ClusterFirst) or none (host's resolv.conf)."""
    if dns is None or not (dns.servers or dns.searches or dns.options):
        return host_resolv
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {s}" for s in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts(hostname: str, ips: list[str]) -> str:
    """What a kubelet-managed /etc/hosts starts with (kubelet overwrites it for most pods)."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    lines += [f"{ip}\t{hostname}" for ip in ips]
    return "\n".join(lines) + "\n"


def hostname_file(hostname: str) -> str:
    return hostname + "\n"
