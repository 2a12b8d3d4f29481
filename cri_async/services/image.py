"""ImageService: one short handler per RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from cri_async.api.runtime.v1 import api_grpc
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.core.images import FilesystemUsage, ImageStore
from cri_async.services import convert
from cri_async.services.rpc import Service, Tracker, server_stream, unary
from cri_async.services.runtime import chunks


class ImageService(Service, api_grpc.ImageServiceBase):
    def __init__(
        self,
        images: ImageStore,
        tracker: Tracker,
        container_fs: Callable[[], list[FilesystemUsage]] = list,
    ) -> None:
        super().__init__(tracker)
        self.images = images
        self.container_fs = container_fs

    def _items(self, f: pb.ImageFilter) -> list[pb.Image]:
        spec = convert.image_spec(f.image) if f.HasField("image") else None
        return [convert.image(i) for i in self.images.list_images(spec)]

    @unary
    async def ListImages(self, req: pb.ListImagesRequest) -> pb.ListImagesResponse:
        return pb.ListImagesResponse(images=self._items(req.filter))

    @server_stream
    async def StreamImages(
        self, req: pb.StreamImagesRequest
    ) -> AsyncIterator[pb.StreamImagesResponse]:
        for chunk in chunks(self._items(req.filter)):
            yield pb.StreamImagesResponse(images=chunk)

    @unary
    async def ImageStatus(self, req: pb.ImageStatusRequest) -> pb.ImageStatusResponse:
        img = self.images.get(convert.image_spec(req.image))
        if img is None:  # kubelet expects an empty answer, not an error
            return pb.ImageStatusResponse()
        info = self.images.verbose_info(img) if req.verbose else {}
        return pb.ImageStatusResponse(image=convert.image(img), info=info)

    @unary
    async def PullImage(self, req: pb.PullImageRequest) -> pb.PullImageResponse:
        auth = convert.auth(req.auth) if req.HasField("auth") else None
        ref = await self.images.pull(convert.image_spec(req.image), auth)
        return pb.PullImageResponse(image_ref=ref)

    @unary
    async def RemoveImage(self, req: pb.RemoveImageRequest) -> pb.RemoveImageResponse:
        await self.images.remove(convert.image_spec(req.image))
        return pb.RemoveImageResponse()

    @unary
    async def ImageFsInfo(self, req: pb.ImageFsInfoRequest) -> pb.ImageFsInfoResponse:
        usage = [convert.fs_usage(u) for u in self.images.fs_usage()]
        writable = [convert.fs_usage(u) for u in self.container_fs()]
        return pb.ImageFsInfoResponse(image_filesystems=usage, container_filesystems=writable)
