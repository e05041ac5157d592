"""gpuacct-exporter: meter GPU and CPU use per Unix user and job on this node.

  gpuacct-exporter run [--web.listen-address HOST:PORT] [--web.config.file FILE] [-v]
                                                               sample and serve /metrics
  gpuacct-exporter [--web.listen-address HOST:PORT] [-v]       the same (older units' form)
  gpuacct-exporter release      lift every quota and remove every notice enforcement set here
                                (a node leaving gpuacct; `gpuacct-stack` at its stop)

SIGHUP reads auth.node_key again (a key rotation); other settings take a restart.
"""

from __future__ import annotations

import os
import sys

from exporter.containers.proxy import DockerProxy
from exporter.devices.base import GpuUnavailable
from exporter.devices.node import open_devices
from exporter.enforce.collector import ActuatorCollector
from exporter.enforce.release import release_all
from exporter.enforce.startup import start_enforcement
from exporter.usage.collector import build_registry
from exporter.usage.sampler import Sampler
from gpuacct.cli_common import (
    command_or_usage,
    load_or_exit,
    service_parser,
    stop_on_signals,
)
from gpuacct.config import Settings
from gpuacct.service import start


def release(settings: Settings) -> int:
    if os.geteuid() != 0:
        print("gpuacct-exporter release: run it as root: it writes cgroups", file=sys.stderr)
        return 2
    released = release_all(settings.exporter.actuator)
    print(f"released: {', '.join(released) or 'nobody was under enforcement'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, sub = service_parser("gpuacct-exporter", __doc__, "sample this node and serve "
                                 "/metrics", "/metrics", bare_runs=True)
    sub.add_parser("release", help="lift every CPU quota and remove every notice this node's "
                                   "enforcement set (stop the exporter first)")
    args = parser.parse_args(argv)
    if command_or_usage(parser, args, bare="run") == "release":
        return release(load_or_exit(args.config))

    service = start("gpuacct-exporter", args, lambda s: s.exporter.listen_address)
    if os.geteuid() != 0:  # else: a permission error every interval, and half the usage
        print("gpuacct-exporter: run it as root: it reads every user's processes in /proc "
              "and acts on them as the enforcer says", file=sys.stderr)
        return 2
    all_settings, settings, log = service.settings, service.settings.exporter, service.log
    host, port = service.host, service.port

    try:
        devices = open_devices(settings)
    except GpuUnavailable as exc:
        print(f"gpuacct-exporter: {exc}", file=sys.stderr)
        return 2
    sampler = Sampler(settings, devices)
    sampler.cycle()  # the first scrape already has data
    registry = build_registry(lambda: sampler.snapshot, settings.actuator.node_name or "")
    enforcement = start_enforcement(all_settings, lambda: sampler.snapshot, service.tls)
    if enforcement:
        registry.register(ActuatorCollector(enforcement.actuator))
        sampler.reserved = enforcement.actuator.reserved_gpus
    try:
        server = service.metrics_server(registry, "gpuacct exporter",
                                        enforcement.routes if enforcement else None,
                                        sampler.scraped)
    except OSError as exc:
        print(f"gpuacct-exporter: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    log.info("serving /metrics on %s:%d, sampling every %gs, state in %s",
             host, port, settings.interval_seconds, settings.state_file)

    stop = stop_on_signals()
    containers = settings.containers
    if containers.proxy_socket is not None and containers.docker_socket is not None:
        try:
            DockerProxy(containers.proxy_socket, containers.docker_socket,
                        containers.proxy_group).start(stop)
            log.info("users' Docker socket on %s (group %s), to %s", containers.proxy_socket,
                     containers.proxy_group, containers.docker_socket)
        except KeyError:
            log.error("no users' Docker socket: exporter.containers.proxy_group %s is no group",
                      containers.proxy_group)
        except OSError as exc:
            log.error("no users' Docker socket: cannot listen on %s: %s",
                      containers.proxy_socket, exc.strerror)
    service.reload_on_sighup(enforcement.rotate if enforcement
                             else lambda _: "nothing: enforcement is off")
    if enforcement:
        enforcement.start(stop)
    sampler.run(stop, enforcement.actuator.cycle if enforcement else None)
    server.shutdown()
    if devices is not None:
        devices.close()
    log.info("stopped")
    return 0
