"""Pod network plumbing: pinned namespaces (and, later, CNI)."""
