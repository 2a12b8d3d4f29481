"""``cri-async images pull|import``: operator commands through the server's Admin API."""

from __future__ import annotations

import argparse
import os
import sys
import time

from grpclib import GRPCError
from grpclib.client import Channel

from cri_async.api.admin.v1 import admin_grpc
from cri_async.api.admin.v1 import admin_pb2 as pb


def bar(done: int, total: int, width: int = 30) -> str:
    if total <= 0:
        return f"{done / 2**20:8.1f} MiB"
    frac = min(done / total, 1.0)
    filled = int(frac * width)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% "
        f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB"
    )


async def run(args: argparse.Namespace) -> int:
    channel = Channel(path=args.socket)
    stub = admin_grpc.AdminStub(channel)
    tty = sys.stderr.isatty()
    try:
        if args.images_command == "pull":
            t0 = time.monotonic()
            image_id = ""
            req = pb.PullImageRequest(
                image=args.ref, username=args.user, password=os.environ.get("CRI_PASSWORD", "")
            )
            async with stub.PullImage.open() as stream:
                await stream.send_message(req, end=True)
                async for msg in stream:
                    if msg.image_id:
                        image_id = msg.image_id
                    elif tty:
                        print(
                            f"\r{args.ref}: {bar(msg.done_bytes, msg.total_bytes)}",
                            end="",
                            file=sys.stderr,
                            flush=True,
                        )
            if tty:
                print(file=sys.stderr)
            print(f"{args.ref}: {image_id} ({time.monotonic() - t0:.1f}s)")
            return 0
        resp = await stub.ImportImages(pb.ImportImagesRequest(path=args.path, name=args.name))
        for img in resp.images:
            print(f"{img.name}: {img.id}")
        return 0
    except GRPCError as e:
        print(f"cri-async images {args.images_command}: {e.message}", file=sys.stderr)
        return 1
    except (ConnectionError, OSError) as e:
        print(f"cri-async: cannot reach the server at {args.socket}: {e}", file=sys.stderr)
        return 1
    finally:
        channel.close()
