"""cri-async: an asyncio-native Kubernetes Container Runtime Interface runtime."""

__version__ = "0.1.0"
RUNTIME_NAME = "cri-async"
CRI_API_VERSION = "v1"
