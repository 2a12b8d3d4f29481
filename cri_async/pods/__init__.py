"""The host side of pods: namespaces, shared files, network and cgroup."""
