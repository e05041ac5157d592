"""Wiring the node's enforcement together: the actuator, its endpoint and the pull loop."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from exporter.containers.docker_api import DockerApi
from exporter.enforce.actuator import Actuator
from exporter.enforce.gating import open_gate
from exporter.enforce.policy_sync import NodeNameEndpoint, PolicyEndpoint, Puller
from exporter.enforce.signals import Signaller
from exporter.enforce.throttle import detect
from exporter.usage.sampler import Snapshot
from exporter.users.socket import Forwarder, UserSocketServer
from gpuacct.config import Settings
from gpuacct.metrics_http import WsgiApp
from gpuacct.policy import NODE_PATH, POLICY_PATH, NodeGpu
from gpuacct.secrets import values
from gpuacct.signing import NodeIdentity

log = logging.getLogger(__name__)


@dataclass
class Enforcement:
    actuator: Actuator
    identity: NodeIdentity
    routes: dict[str, WsgiApp]
    puller: Puller | None
    user_socket: UserSocketServer | None = None

    def rotate(self, settings: Settings) -> str:
        """What SIGHUP does: the node's keys (auth.node_key) read again."""
        if not settings.auth.node_key:
            raise ValueError("auth.node_key is no longer set")
        self.identity.rotate([k.encode() for k in values(settings.auth.node_key)])
        return f"{len(settings.auth.node_key)} node key(s)"

    def start(self, stop: threading.Event) -> None:
        if self.puller:
            self.puller.start(stop)
        if self.user_socket:
            self.user_socket.start(stop)


def node_gpus(snapshot: Snapshot) -> tuple[NodeGpu, ...] | None:
    """The GPUs this node can give out and whose processes run on each now (None until the
    first reading)."""
    if snapshot.gpus is None:
        return None
    users: dict[int, set[str]] = {}
    for h in snapshot.holders:
        users.setdefault(int(h.unit.label.split("/")[0]), set()).add(h.user)
    return tuple(NodeGpu(index=d.index, model=d.model, users=tuple(sorted(users.get(d.index, ()))),
                         memory_total_bytes=d.memory_total_bytes,
                         memory_used_bytes=d.memory_used_bytes,
                         utilization=_ratio(d.utilization_ratio))
                 for d in snapshot.gpus.devices if not d.lost)


def _ratio(value: float | None) -> float | None:
    return None if value is None else min(max(value, 0.0), 1.0)


def start_enforcement(settings: Settings, latest: Callable[[], Snapshot],
                      tls: ssl.SSLContext | None = None) -> Enforcement | None:
    """The node's enforcement, or None (logged) when it is off or has no key to trust; `tls`
    verifies an https:// enforcer."""
    actuator_settings = settings.exporter.actuator
    if not actuator_settings.enabled:
        log.info("enforcement is off (exporter.actuator.enabled)")
        return None
    if settings.auth.node_key is None:
        log.warning("enforcement is off: auth.node_key is not set, so no policy can be trusted")
        return None
    limiter = detect(actuator_settings.cpu_limiter, actuator_settings.cgroup_root)
    engine = settings.exporter.containers.docker_socket
    signaller = Signaller(settings.exporter.min_uid, actuator_settings.protected_users,
                          actuator_settings.dry_run, only_users=settings.exporter.only_users,
                          engine=DockerApi(engine) if engine else None)
    node = actuator_settings.node_name or socket.gethostname()
    identity = NodeIdentity(node, [k.encode() for k in values(settings.auth.node_key)],
                            settings.auth.max_clock_skew_seconds)
    gate, gating = open_gate(actuator_settings.device_gating, actuator_settings.cgroup_root,
                             actuator_settings.device_root, actuator_settings.cgroup_group,
                             actuator_settings.user_slices)
    actuator = Actuator(actuator_settings, node, signaller, limiter, latest, gate=gate,
                        gating=gating)
    idle = settings.exporter.idle
    if idle is not None:
        actuator.idle_action, actuator.idle_action_after = idle.action, idle.action_after_seconds
    actuator.unattributed_action = settings.exporter.unattributed.action
    puller = user_socket = None
    url = actuator_settings.enforcer_url
    if url:
        puller = Puller(actuator, url, identity, actuator_settings.pull_interval_seconds,
                        gpus=lambda: node_gpus(latest()), tls=tls)
        if actuator_settings.user_socket is not None:
            forwarder = Forwarder(identity, url, lambda: node_gpus(latest()), tls=tls)
            try:
                user_socket = UserSocketServer(actuator_settings.user_socket, forwarder,
                                               actuator.place_session)
            except OSError as exc:
                log.warning("no gpuacct user commands here: cannot listen on %s: %s",
                            actuator_settings.user_socket, exc.strerror)
    log.info("enforcement on as node %s: CPU limiter %s, GPU device gating %s%s, policy %s",
             node, limiter.name if limiter else "none", gating,
             ", DRY RUN" if actuator_settings.dry_run
             else "", f"pulled from {actuator_settings.enforcer_url}" if puller
             else "pushed only")
    routes: dict[str, WsgiApp] = {POLICY_PATH: PolicyEndpoint(actuator, identity),
                                  NODE_PATH: NodeNameEndpoint(node)}
    return Enforcement(actuator, identity, routes, puller, user_socket)
