"""Removing the NAT rules a CNI DEL left behind when the pod's namespace was gone.

With an empty CNI_NETNS the bridge plugin (at least up to 1.1.1) releases the IP but keeps
its ``ipMasq`` rules: it learns the addresses from the interface it can no longer see.
Those rules carry the comment ``name: "<network>" id: "<container id>"``; this module
deletes them, and the private ``CNI-`` chains they own, in the IPv4 and IPv6 ``nat``
tables. The ``CNI-HOSTPORT-*`` chains that every pod shares are never touched.
"""

from __future__ import annotations

import logging
import shlex
import shutil

from cri_async import proc
from cri_async.network.cniexec import plugin_env

log = logging.getLogger("cri_async.network.cni")


def nat_cleanup(save_text: str, tag: str) -> list[list[str]]:
    """iptables arguments that delete the rules carrying ``tag`` and the chains they own.

    ``save_text`` is ``iptables-save -t nat`` output. A chain is removed (flush, then delete)
    when it is a ``CNI-`` chain other than the shared ``CNI-HOSTPORT-*`` ones, it held or was
    the target of a tagged rule, and nothing else jumps to it.
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


async def sweep_nat(network: str, container_id: str, *, timeout: float) -> None:
    """Remove the NAT rules tagged for this attachment, and their private CNI- chains.

    Best effort: a missing iptables, a failing command or a timeout is logged, not raised.
    """
    tag = f'name: "{network}" id: "{container_id}"'
    env = plugin_env()

    async def run(*argv: str) -> tuple[int, str]:
        done = await proc.run(argv, timeout=timeout, env=env)
        return done.returncode, (done.stdout or done.stderr).decode(errors="replace")

    for save, tool in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        if shutil.which(save, path=env["PATH"]) is None:
            continue
        try:
            returncode, text = await run(save, "-t", "nat")
            if returncode != 0:
                continue
            for argv in nat_cleanup(text, tag):
                returncode, msg = await run(tool, "-w", "-t", "nat", *argv)
                if returncode != 0:
                    log.warning("CNI: %s %s: %s", tool, shlex.join(argv), msg.strip())
        except (OSError, TimeoutError) as e:
            log.warning("CNI: sweeping %s NAT rules of %s: %s", tool, container_id, e)
