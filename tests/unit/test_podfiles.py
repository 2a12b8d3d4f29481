from cri_async.core.model import DNSConfig
from cri_async.network import podfiles


def test_resolv_conf_from_dns_config() -> None:
    dns = DNSConfig(("10.96.0.10",), ("ns.svc.cluster.local", "svc.cluster.local"), ("ndots:5",))
    assert podfiles.resolv_conf(dns, "nameserver 1.1.1.1\n") == (
        "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    )


def test_resolv_conf_falls_back_to_the_hosts() -> None:
    assert podfiles.resolv_conf(None, "nameserver 9.9.9.9\n") == "nameserver 9.9.9.9\n"
    assert podfiles.resolv_conf(DNSConfig(), "x\n") == "x\n"


def test_hosts_and_hostname() -> None:
    text = podfiles.hosts("web-0", ["10.1.2.3"])
    assert text.startswith("127.0.0.1\tlocalhost\n") and text.endswith("10.1.2.3\tweb-0\n")
    assert podfiles.hostname_file("web-0") == "web-0\n"
