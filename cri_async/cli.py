"""Command line: ``cri-async serve | config | version | images | install-service | check``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from cri_async import CRI_API_VERSION, __version__, logsetup, sdnotify
from cri_async.config import ConfigError, ServerConfig, load
from cri_async.core.errors import CRIError

READY_TIMEOUT = 30.0


async def _serve(config_path: str | None) -> int:
    from cri_async.server import Server

    config = load(config_path)
    logsetup.setup(config.log.level, config.log.format)
    server = Server(config)
    await server.start()
    loop = asyncio.get_running_loop()

    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        sdnotify.notify("STOPPING=1")
        stopping.append(asyncio.ensure_future(server.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    # systemd (Type=notify) is told we are ready only once a CRI call over the socket
    # answers, as kubelet will make it.
    from cri_async.client import CRIClient

    client = CRIClient(server.socket_path)
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await client.version()
    finally:
        client.close()
    sdnotify.notify(f"READY=1\nSTATUS=serving CRI on unix://{server.socket_path}")
    await server.wait()
    return 0


def _install_service(args: argparse.Namespace) -> int:
    from cri_async import service_unit as su
    from cri_async.configtoml import default_toml

    try:
        binary = os.path.abspath(args.binary) if args.binary else su.this_binary()
    except FileNotFoundError as e:
        print(f"cri-async: {e}", file=sys.stderr)
        return 2
    opts = su.UnitOptions(
        binary=binary,
        env_file=os.path.abspath(args.env_file),  # systemd wants absolute paths
        config=os.path.abspath(args.config),
        limit_nofile=args.limit_nofile,
    )
    unit_path = Path(args.unit_dir).absolute() / su.UNIT_NAME
    if args.dry_run:
        print(
            f"# {unit_path}\n{su.render_unit(opts)}\n# {opts.env_file}\n{su.render_env(opts)}",
            end="",
        )
        return 0
    for w in su.install(opts, unit_path.parent, default_toml()):
        print(f"{w.action} {w.path}")
    print("next: systemctl daemon-reload && systemctl enable --now cri-async")
    return 0


def _check(args: argparse.Namespace) -> int:
    from cri_async import hostcheck, hostcheck_gather

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"cri-async: config: {e}", file=sys.stderr)
        return 2
    findings = hostcheck.check(hostcheck_gather.gather(config))
    print(hostcheck.report(findings), end="")
    return 1 if hostcheck.failed(findings) else 0


DEFAULT_SOCKET = ServerConfig().socket


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cri-async", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the CRI server")
    serve.add_argument("--config", help="TOML config file (default: built-in defaults)")
    cfg = sub.add_parser("config", help="print configuration")
    cfg.add_argument("--default", action="store_true", help="print the documented defaults")
    cfg.add_argument("--check", metavar="PATH", help="validate a config file")
    cfg.add_argument(
        "--cni-default", action="store_true", help="print the default CNI bridge network"
    )
    sub.add_parser("version", help="print the version")
    inst = sub.add_parser("install-service", help="write the systemd unit and its environment file")
    inst.add_argument("--dry-run", action="store_true", help="print them instead")
    inst.add_argument("--unit-dir", default="/etc/systemd/system")
    inst.add_argument("--env-file", default="/etc/default/cri-async")
    inst.add_argument(
        "--config",
        default="/etc/cri-async/config.toml",
        help="written with the defaults if missing",
    )
    inst.add_argument("--binary", default="", help="cri-async executable (default: this one)")
    inst.add_argument("--limit-nofile", type=int, default=1048576)
    chk = sub.add_parser("check", help="check this host for what cri-async needs")
    chk.add_argument("--config", help="TOML config file (default: built-in defaults)")
    images = sub.add_parser("images", help="pull or import images through a running server")
    images.add_argument("--socket", default=DEFAULT_SOCKET, help="the server's socket")
    isub = images.add_subparsers(dest="images_command", required=True)
    ipull = isub.add_parser("pull", help="pull an image, showing progress")
    ipull.add_argument("ref")
    ipull.add_argument("--user", default="", help="registry user (password from $CRI_PASSWORD)")
    iimp = isub.add_parser("import", help="import an OCI layout or docker save archive")
    iimp.add_argument("path")
    iimp.add_argument("--name", default="", help="reference for an image the layout leaves unnamed")
    args = parser.parse_args(argv)

    if args.command == "images":
        from cri_async import images_cli

        if args.images_command == "import":
            args.path = os.path.abspath(args.path)  # the server resolves it, not us
        try:
            return asyncio.run(images_cli.run(args))
        except KeyboardInterrupt:
            return 130

    if args.command == "install-service":
        return _install_service(args)
    if args.command == "check":
        return _check(args)
    if args.command == "version":
        print(f"cri-async {__version__} (CRI {CRI_API_VERSION})")
        return 0
    if args.command == "config":
        if args.cni_default:
            from cri_async.network.cniconf import DEFAULT_CONFLIST

            print(DEFAULT_CONFLIST, end="")
            return 0
        if args.check:
            try:
                load(args.check)
            except ConfigError as e:
                print(f"cri-async: {args.check}: {e}", file=sys.stderr)
                return 2
            print(f"{args.check}: ok")
            return 0
        from cri_async.configtoml import default_toml

        print(default_toml(), end="")
        return 0
    try:
        if load(args.config).server.uvloop:
            try:
                import uvloop  # type: ignore[import-not-found]
            except ImportError:
                raise ConfigError(
                    "server.uvloop: uvloop is not installed (pip install 'cri-async[uvloop]')"
                ) from None
            uvloop.install()
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_serve(args.config))
        return 0
    except ConfigError as e:
        print(f"cri-async: config: {e}", file=sys.stderr)
        return 2
    except CRIError as e:
        print(f"cri-async: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
