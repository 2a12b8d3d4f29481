"""Container and pod stats: cgroup v1/v2 parsers, a background-refreshed cache, pod network
counters read inside the pod's netns, and cAdvisor-compatible CRI metrics.

Domain code only: frozen dataclasses (``model``), no protobuf; the gRPC edge converts.
"""

from cri_async.core.stats import ContainerSample, PodSample

from .cache import StatsCache
from .cgroups import CgroupReader
from .cgroupstats import CgroupStats

__all__ = ["CgroupReader", "CgroupStats", "ContainerSample", "PodSample", "StatsCache"]
