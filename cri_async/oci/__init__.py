"""OCI runtime-spec generation: pure functions from the CRI domain model to config.json.

No I/O happens here: the caller reads /etc/passwd, Localhost seccomp profiles, device nodes
and host facts, and passes them in.
"""

from cri_async.oci.errors import SpecError
from cri_async.oci.inputs import DeviceNode, HostFacts, PodPaths
from cri_async.oci.process import exec_process
from cri_async.oci.seccomp import runtime_default_profile
from cri_async.oci.spec import container_spec
from cri_async.oci.user import ResolvedUser, UserError, resolve_user

__all__ = [
    "DeviceNode",
    "HostFacts",
    "PodPaths",
    "ResolvedUser",
    "SpecError",
    "UserError",
    "container_spec",
    "exec_process",
    "resolve_user",
    "runtime_default_profile",
]
