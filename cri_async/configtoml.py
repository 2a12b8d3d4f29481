"""The documented default configuration: every key with its default and what it does.

``cri-async config --default`` prints it, docs/configuration.md is generated from it, and a
test checks that it parses to exactly ``Config()``. The handler tables are rendered from
``default_runtimes`` so they match what this host's defaults really are.
"""

from __future__ import annotations

import dataclasses
import textwrap

from cri_async.config import (
    KNOWN_HANDLERS,
    HandlerConfig,
    default_runtimes,
    installed_at_first_use,
)

_HEAD = """\
# cri-async configuration. Every key is shown with its default value.
# Unknown keys and bad values are rejected at startup with a message naming the key.

[server]
# The CRI gRPC endpoint (kubelet: --container-runtime-endpoint=unix://<socket>).
socket = "/run/cri-async/cri-async.sock"
# Permissions of the socket file (octal).
socket_mode = "0660"
# Upper bound in seconds for any RPC; a shorter client deadline wins.
rpc_timeout = 240.0
# On SIGTERM/SIGINT: how long in-flight RPCs may finish before they are cancelled.
shutdown_timeout = 10.0
# Run the event loop on uvloop (needs the "uvloop" extra installed).
uvloop = false
# Largest request message a client may send (bytes, 16 MiB, as containerd's CRI server and
# kubelet's client); a larger one is refused with RESOURCE_EXHAUSTED before it is read.
max_request_bytes = 16777216
# RPCs one client connection may have in flight at once (HTTP/2 MAX_CONCURRENT_STREAMS);
# kubelet multiplexes every call of the node over one connection. Clients queue calls
# beyond it; one that ignores it is disconnected.
max_concurrent_streams = 1000

[log]
# debug | info | warning | error. At debug every RPC is logged with its duration.
level = "info"
# text | json (one JSON object per line).
format = "text"

[state]
# Durable state: the SQLite database (state.db) and, later, content and snapshots.
root = "/var/lib/cri-async"
# Runtime state that must not outlive a reboot (backend roots, bundles).
run_root = "/run/cri-async"
# full: fsync every commit (survives power loss); normal: survives a crash of cri-async.
sync = "full"

[runtime]
# The handler used when a pod names no RuntimeClass handler.
default_handler = ""
# cgroupfs | systemd, reported to kubelet by the RuntimeConfig RPC.
cgroup_driver = "cgroupfs"
# Events buffered per GetContainerEvents subscriber; a subscriber that falls this far
# behind is disconnected rather than slowing the runtime down.
event_queue_size = 1024
# Seconds allowed for each cleanup step when a create fails or is cancelled.
cleanup_timeout = 30.0
# The conmon binary that supervises each container (logs, exit code, attach).
conmon = "conmon"

"""

_RUNTIMES_DOC = """\
# One table per RuntimeClass handler: [runtimes."<handler>"]. "" is the default handler.
# Without any [runtimes.*] table the handlers are "" plus one per OCI runtime found in PATH
# when cri-async starts (runc, crun, youki, runsc); "" runs on runc (on crun when only crun
# is found). Listing any [runtimes.*] table replaces that set.
# A configured handler whose binary is missing is reported not ready by Status (with the
# reason; `crictl info` shows it) and refused by RunPodSandbox; the server still starts.
# A containerd shim v2 runtime is a handler too (docs/runtimes.md), e.g. Kata Containers:
# [runtimes.kata]
# backend = "shimv2"
# runtime_type = "io.containerd.kata.v2"
# sandbox_task = true
# shim_stats = true
"""

_TAIL = """\
[images]
# registry: pull from OCI registries into <state.root>/content and <state.root>/snapshots.
# fake: serve the [[fake.images]] catalog below without any network (for tests, demos).
backend = "registry"
# Images that kubelet's image garbage collection must never remove (RemoveImage refuses).
pinned = ["registry.k8s.io/pause:3.10"]
# os/arch[/variant] to pick from multi-platform images; empty means this host's.
platform = ""
# Layers downloaded at once per node.
max_concurrent_downloads = 3
# Seconds without a single byte after which a download fails (no limit on total time).
stall_timeout = 60.0
# Limits against decompression bombs and runaway images; a pull or import beyond one fails
# with RESOURCE_EXHAUSTED naming it and leaves nothing behind. The defaults fit the largest
# real images (CUDA and ML bases: a few layers of 5-15 GiB, 20-40 GiB in all).
# Uncompressed bytes one layer may unpack to (32 GiB).
max_layer_bytes = 34359738368
# Uncompressed bytes all layers of one image may unpack to (64 GiB).
max_image_bytes = 68719476736
# Tar entries (files, directories, links, whiteouts...) one layer may hold.
max_layer_entries = 1000000
# Bytes a pull must leave free on the filesystem of <state.root> (1 GiB); checked before
# the layers download, from their sizes in the manifest. 0 turns the check off.
min_free_bytes = 1073741824
# Layers one container's overlay mount stacks at most (overlayfs allows 500; fewer are
# stacked when their paths under <state.root> would not fit in 48 KiB, for runc). The
# deepest layers of an image with more are merged into one snapshot when it is pulled.
max_mount_layers = 500

[registry]
# A containerd-style hosts directory: <config_path>/<host>/hosts.toml (and _default/),
# with server, [host."<url>"] capabilities, skip_verify, ca, header. Empty: not used.
config_path = ""
# A Docker config.json with {"auths": {"<host>": {"auth": "<base64 user:pass>"}}}, used
# when a PullImage request carries no credentials. Empty: none.
credentials_file = ""
# Hosts reached with TLS but no certificate verification, falling back to plain HTTP.
# Loopback hosts (localhost, 127.0.0.0/8, ::1) use plain HTTP unless [registry.ca]
# names them, as containerd does.
insecure = []

# CA certificates (PEM files) to trust per registry host, besides the system's. A host
# listed here is reached over HTTPS even on loopback:
# [registry.ca]
# "registry.internal:5000" = ["/etc/cri-async/certs/internal-ca.pem"]
[registry.ca]

# Mirrors per registry host, tried in order before the host itself:
# [registry.mirrors]
# "docker.io" = ["https://mirror.example.com"]
[registry.mirrors]

[network]
# CNI: the first valid .conflist/.conf/.json (by file name) in these directories is the pod
# network; a config added later makes the node NetworkReady without a restart.
# `cri-async config --cni-default` prints a bridge network (`make run` installs it into
# /etc/cni/net.d when that directory has no config).
conf_dirs = ["/etc/cni/net.d"]
# Where plugin binaries are looked up (Debian's containernetworking-plugins: /usr/lib/cni).
bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
# Seconds one plugin invocation may take.
plugin_timeout = 60.0
# Seconds a pod's network teardown (CNI DEL of the whole chain) may take when a pod stops or
# is removed; past it the removal goes on and the teardown is retried later.
teardown_timeout = 120.0

[streaming]
# The Exec/Attach/PortForward server (HTTP/1.1 upgraded to SPDY/3.1 or WebSocket). The
# RPCs answer URLs to it; kubelet proxies kubectl's sessions there, crictl dials directly.
# Listen address; the default keeps sessions on this node.
address = "127.0.0.1"
# Listen port; 0 picks a free one (the URLs carry the port actually bound).
port = 0
# Host put into the URLs; empty: the listen address (127.0.0.1 for a wildcard address).
advertise_address = ""
# Seconds without any traffic after which a session's connection is closed.
idle_timeout = 14400.0
# Seconds a client may take to open all the streams of a session.
stream_creation_timeout = 30.0
# Serve HTTPS. Without the two files, a self-signed certificate is made at startup (as
# containerd does); note that clients which verify certificates refuse it.
tls = false
# PEM certificate chain served when tls is true (set together with tls_key_file).
tls_cert_file = ""
# PEM private key of tls_cert_file.
tls_key_file = ""

[metrics]
# host:port of the Prometheus endpoint (GET /metrics), e.g. "127.0.0.1:9464". Empty: off
# (then the Prometheus client is not even imported).
address = ""

[tracing]
# OpenTelemetry: the OTLP/HTTP (protobuf) traces URL of a collector, e.g.
# "http://127.0.0.1:4318/v1/traces". Empty: off (then OpenTelemetry is not imported).
# One span per RPC, a child of the W3C `traceparent` the client (kubelet) sends.
endpoint = ""
# Fraction of new traces recorded (0.0 to 1.0); a sampled parent from kubelet is honoured.
sampling_ratio = 1.0
# service.name of the spans.
service_name = "cri-async"

# The images the fake backend's simulated registry serves, one [[fake.images]] each.
[[fake.images]]
# The image reference it answers to.
ref = "docker.io/library/busybox:latest"
# Size in bytes reported for it.
size = 2167176
# Its image config: ENTRYPOINT, CMD, ENV, USER, WORKDIR and STOPSIGNAL.
entrypoint = []
cmd = ["sh"]
env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
user = ""
working_dir = ""
stop_signal = ""

[[fake.images]]
ref = "docker.io/library/busybox:1.36"
size = 2167176
entrypoint = []
cmd = ["sh"]
env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
user = ""
working_dir = ""
stop_signal = ""

[[fake.images]]
ref = "docker.io/library/nginx:latest"
size = 67000000
entrypoint = ["/docker-entrypoint.sh"]
cmd = ["nginx", "-g", "daemon off;"]
env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
user = ""
working_dir = ""
stop_signal = "SIGQUIT"

[[fake.images]]
ref = "registry.k8s.io/pause:3.10"
size = 320368
entrypoint = []
cmd = ["/pause"]
env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
user = "65535"
working_dir = ""
stop_signal = ""
"""


# What each key of a handler table means (shown above the keys of the first table).
_HANDLER_KEYS = {
    "backend": "runc | crun | youki (real containers under conmon), runsc (gVisor: one "
    "sandbox per pod, containers join it), shimv2 (a containerd shim v2 runtime: Kata, "
    "gVisor's shim, runwasi, containerd-shim-runc-v2; see runtime_type) or fake (simulated "
    "containers, no root needed).",
    "root": "The backend's state directory; empty means <state.run_root>/<backend>/<handler>.",
    "binary": "The OCI runtime binary; empty means the backend's name, found in PATH. shimv2 "
    "with runc options: the runtime the shim runs (binary_name, e.g. crun); empty: runc.",
    "platform": "runsc only: ptrace (kvm hangs on this kind of VM).",
    "network": "runsc only: host (gVisor uses the pod netns' kernel stack) or sandbox "
    "(gVisor's netstack).",
    "infra_binary": "runsc, and shimv2 with sandbox_task: the pod's pause process (empty: "
    "catatonit, else busybox-static).",
    "runtime_type": "shimv2 only: the shim, as containerd names it (io.containerd.runc.v2, "
    "io.containerd.kata.v2, io.containerd.runsc.v1, io.containerd.wasmtime.v1...: "
    "containerd-shim-<name>-<version> found in PATH) or the absolute path of a shim binary.",
    "shim_namespace": "shimv2 only: the containerd namespace the shims are told (part of "
    "their socket names and of runc's state path).",
    "shim_options": "shimv2 only: the options given to the shim's start and Create. auto: "
    "runc for a runc shim (io.containerd.runc.*), runtime when config_path or "
    "options_type_url is set, else none. runc: containerd.runc.v1.Options with its root "
    "under this handler's root and binary_name = binary. runtime: runtimeoptions.v1.Options "
    "(config_path, options_type_url).",
    "config_path": "shimv2 only: runtime options' config_path (Kata: its configuration.toml; "
    "gVisor's shim: its runsc.toml).",
    "options_type_url": "shimv2 only: runtime options' type_url (gVisor's shim: "
    "io.containerd.runsc.v1.options).",
    "sandbox_task": "shimv2 only: start each pod's infra task (the pause binary, annotated "
    "container-type=sandbox) before its containers, as Kata and gVisor's shim need; runc's "
    "shim does not.",
    "shim_stats": "shimv2 only: read container stats through the shim's Stats call, for "
    "shims whose containers the host's cgroups do not describe (Kata's VM).",
    "shim_timeout": "shimv2 only: seconds for each task API call and for the shim's start "
    "and delete commands.",
}


def _handler_toml(name: str, h: HandlerConfig, documented: bool) -> str:
    lines = [f"[runtimes.{name}]" if name else '[runtimes.""]']
    for f in dataclasses.fields(HandlerConfig):
        if documented:
            lines += [
                f"# {line}"
                for line in textwrap.wrap(_HANDLER_KEYS[f.name], 88, break_on_hyphens=False)
            ]
        lines.append(f"{f.name} = {_toml_value(getattr(h, f.name))}")
    return "\n".join(lines) + "\n\n"


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def default_toml(installed: tuple[str, ...] | None = None) -> str:
    """Every key with its default and what it does (``cri-async config --default``).
    ``installed`` overrides the runtimes found in PATH (docs use all of them)."""
    found = installed_at_first_use() if installed is None else installed
    text = _HEAD + _RUNTIMES_DOC
    missing = [b for b in KNOWN_HANDLERS if b not in found]
    if missing:
        text += f"# Not found in PATH, so not configured: {', '.join(missing)}.\n"
    for i, (name, h) in enumerate(default_runtimes(found).items()):
        text += _handler_toml(name, h, documented=i == 0)
    return text + _TAIL
