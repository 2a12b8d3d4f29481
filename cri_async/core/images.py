"""The image store interface the runtime core and the image service depend on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cri_async.core.model import Image, ImageSpec


@dataclass(frozen=True, slots=True)
class AuthConfig:
    username: str = ""
    password: str = ""
    auth: str = ""
    server_address: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def __repr__(self) -> str:  # credentials never reach logs
        return f"AuthConfig(username={self.username!r}, server_address={self.server_address!r})"


@dataclass(frozen=True, slots=True)
class FilesystemUsage:
    timestamp: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


class PullProgress(Protocol):
    @property
    def done(self) -> int: ...

    @property
    def total(self) -> int: ...


class ImageStore(Protocol):
    async def load(self) -> None:
        """Read persisted images (startup)."""
        ...

    async def pull(self, spec: ImageSpec, auth: AuthConfig | None) -> str:
        """Make the image present locally; returns its id (image_ref)."""
        ...

    def get(self, spec: ImageSpec) -> Image | None:
        """Resolve a tag, digest reference, id or unique id prefix; None when absent."""
        ...

    def list_images(self, spec: ImageSpec | None = None) -> list[Image]: ...

    async def remove(self, spec: ImageSpec) -> None:
        """Remove a tag (the image goes when its last tag does) or, by id, the whole image.
        Absent images are not an error."""
        ...

    def fs_usage(self) -> list[FilesystemUsage]: ...

    def verbose_info(self, image: Image) -> dict[str, str]:
        """ImageStatus(verbose) ``info``: ``{"info": <JSON with the image config>}``."""
        ...

    def progress(self, spec: ImageSpec) -> PullProgress | None:
        """Bytes done of a pull in progress (None: none running)."""
        ...

    async def import_path(self, path: Path, name: str = "") -> list[tuple[str, str]]:
        """Import an OCI layout or ``docker save`` archive; (name, image id) per image."""
        ...

    async def close(self) -> None: ...
