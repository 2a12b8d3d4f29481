"""Finding crictl (cri-tools) for interoperability tests. It is not packaged by Debian:
tests that need it run where a cri-tools release is installed and skip elsewhere."""

from __future__ import annotations

import glob
import os
import shutil


def find_crictls() -> list[str]:
    """Every installed crictl: $CRICTL, the cri-tools releases under /opt/critools
    (v1.26.1 is what critest vendors), or the one in PATH."""
    found = [os.environ.get("CRICTL", ""), *sorted(glob.glob("/opt/critools/*/bin/crictl"))]
    found.append(shutil.which("crictl") or "")
    out: list[str] = []
    for c in found:
        if c and os.access(c, os.X_OK) and os.path.realpath(c) not in map(os.path.realpath, out):
            out.append(c)
    return out
