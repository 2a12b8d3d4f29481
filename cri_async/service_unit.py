"""``cri-async install-service``: the systemd unit and its environment file (rendering is pure).

The unit is what a node needs from systemd to run a container runtime:
- ``Type=notify``: systemd waits for ``READY=1``, sent once the CRI socket answers, so
  kubelet (``After=cri-async.service``) never starts against a dead socket.
- ``KillMode=process``: stopping or restarting cri-async signals only cri-async; conmon and
  the containers keep running and are re-attached by the next start.
- ``Delegate=yes``: cri-async manages the cgroups below its own (cgroupfs driver).
- ``LimitNOFILE``: containers inherit the limit (and RLIMIT_NOFILE cannot be raised later).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "cri-async.service"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
DEFAULT_ENV_FILE = "/etc/default/cri-async"
DEFAULT_CONFIG = "/etc/cri-async/config.toml"
DEFAULT_NOFILE = 1048576
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class UnitOptions:
    binary: str  # absolute path of the cri-async executable
    env_file: str = DEFAULT_ENV_FILE
    config: str = DEFAULT_CONFIG
    limit_nofile: int = DEFAULT_NOFILE


def render_unit(o: UnitOptions) -> str:
    return f"""\
# Written by `cri-async install-service`; run it again rather than editing this file
# (put local changes in a drop-in: systemctl edit cri-async).
[Unit]
Description=cri-async Kubernetes container runtime (CRI)
After=network.target local-fs.target
Wants=network.target

[Service]
Type=notify
NotifyAccess=main
EnvironmentFile={o.env_file}
ExecStart={o.binary} serve --config ${{CRI_ASYNC_CONFIG}}
Restart=always
RestartSec=5
# Recovery re-attaches every running container before READY=1.
TimeoutStartSec=300
# Only cri-async is stopped: containers and their conmon processes keep running.
KillMode=process
Delegate=yes
LimitNOFILE={o.limit_nofile}
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
"""


def render_env(o: UnitOptions) -> str:
    return f"""\
# Environment of cri-async.service (written by `cri-async install-service`, then yours).
# The config file `cri-async serve` reads (`cri-async config --default` prints every key).
CRI_ASYNC_CONFIG={o.config}
# Where OCI runtimes (runc, crun, runsc), conmon and CNI plugins are found.
PATH={DEFAULT_PATH}
# Image pulls go through a proxy when these are set:
#HTTPS_PROXY=http://proxy.example:3128
#NO_PROXY=localhost,127.0.0.1
"""


def this_binary() -> str:
    """The installed ``cri-async`` entry point beside this interpreter, else the one in
    PATH; the unit must not depend on the shell that ran install-service."""
    beside = Path(sys.executable).parent / "cri-async"
    if os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("cri-async")
    if found is None:
        raise FileNotFoundError("cannot find the cri-async executable; give --binary")
    return str(Path(found).absolute())


@dataclass(frozen=True, slots=True)
class Written:
    path: Path
    action: str  # "wrote" | "kept"


def install(o: UnitOptions, unit_dir: Path, config_text: str) -> list[Written]:
    """Write the unit (always: it is ours), the env file and the config (only if missing:
    they are the operator's once written)."""
    out: list[Written] = []
    unit = unit_dir / UNIT_NAME
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(render_unit(o))
    unit.chmod(0o644)
    out.append(Written(unit, "wrote"))
    for path, text in ((Path(o.env_file), render_env(o)), (Path(o.config), config_text)):
        if path.exists():
            out.append(Written(path, "kept"))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
        out.append(Written(path, "wrote"))
    return out
