"""Test infrastructure: a real local OCI registry and an image builder (see registry.py,
images.py, tokenserver.py)."""
