"""Admin service: cri-async's own operator RPCs (pull with progress, offline import)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from cri_async.api.admin.v1 import admin_grpc
from cri_async.api.admin.v1 import admin_pb2 as pb
from cri_async.core.images import AuthConfig, ImageStore
from cri_async.core.model import ImageSpec
from cri_async.services.rpc import Service, Tracker, server_stream, unary

PROGRESS_EVERY = 0.25  # seconds between progress messages


class AdminService(Service, admin_grpc.AdminBase):
    def __init__(self, images: ImageStore, tracker: Tracker) -> None:
        super().__init__(tracker)
        self.images = images

    @server_stream
    async def PullImage(self, req: pb.PullImageRequest) -> AsyncIterator[pb.PullProgress]:
        store = self.images
        spec = ImageSpec(image=req.image)
        auth = AuthConfig(username=req.username, password=req.password) if req.username else None
        task = asyncio.ensure_future(store.pull(spec, auth))
        try:
            while not task.done():
                await asyncio.wait([task], timeout=PROGRESS_EVERY)
                p = store.progress(spec)
                if p is not None and not task.done():
                    yield pb.PullProgress(done_bytes=p.done, total_bytes=p.total)
            image_id = task.result()
        finally:
            if not task.done():
                task.cancel()
        yield pb.PullProgress(image_id=image_id)

    @unary
    async def ImportImages(self, req: pb.ImportImagesRequest) -> pb.ImportImagesResponse:
        done = await self.images.import_path(Path(req.path), req.name)
        return pb.ImportImagesResponse(images=[pb.ImportedImage(name=n, id=i) for n, i in done])
