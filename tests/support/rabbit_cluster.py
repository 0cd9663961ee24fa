"""RabbitMQ nodes of the tests' own on loopback, to stop and bring back while Caly runs on them.

Each node has its own name (`caly-<id>-<n>@localhost`), ports, data and log directories and an
Erlang cookie shared only with its siblings; none of the machine's RabbitMQ configuration is read
and the machine's own broker is never addressed. `start_cluster(3)` joins three nodes with
`rabbitmqctl join_cluster`; `start_cluster(1)` is a single broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.polling import wait_for

# The scripts themselves: /usr/sbin's wrappers switch to the `rabbitmq` user and its HOME, whose
# cookie is the machine broker's.
RABBITMQ_BIN = Path(os.environ.get("CALY_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
BOOT_TIMEOUT = 90


@dataclass
class RabbitNode:
    name: str
    port: int
    dist_port: int
    home: Path  # shared by the cluster's nodes: its .erlang.cookie makes them one cluster
    base: Path  # this node's own directories
    process: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **env,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            # An empty environment file in place of /etc/rabbitmq/rabbitmq-env.conf, which names
            # the machine's node.
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def write_config(self) -> None:
        (self.base / "log").mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")  # no management, nothing else
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )

    def start(self) -> None:
        """Boot the node (returns at once; `await_startup` waits for it)."""
        log = open(self.base / "log" / "console.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            cwd=self.base,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the finaliser kills all of it
        )
        log.close()

    def ctl(self, *args: str, timeout: float = 60, tool: str = "rabbitmqctl") -> str:
        """Run a CLI tool against this node; its standard output."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / tool), "-n", self.name, *args],
            env=self.env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} on {self.name} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        return done.stdout

    def await_startup(self, timeout: float = BOOT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout

        def booted():
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"RabbitMQ node {self.name} exited:\n{self.log_tail()}")
            try:
                self.ctl("-q", "await_startup", "--timeout", "5", timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                return False  # not registered with epmd yet, or still booting
            return True

        wait_for(
            booted,
            timeout=max(deadline - time.monotonic(), 1),
            interval=0.2,
            what=f"RabbitMQ node {self.name} to boot",
        )

    def first_boot(self, attempts: int = 3) -> None:
        """Boot a new node; if a port it was given was taken meanwhile, again on other ports."""
        for attempt in range(attempts):
            self.write_config()
            self.start()
            try:
                self.await_startup()
                return
            except AssertionError:
                if attempt == attempts - 1 or "eaddrinuse" not in self.log_tail(400):
                    raise
            self.kill()
            shutil.rmtree(self.base, ignore_errors=True)
            self.port, self.dist_port = free_ports(2)

    def stop(self, timeout: float = 60) -> None:
        """`rabbitmqctl stop`: the node shuts down in order, as in a maintenance restart."""
        if not self.running():
            return
        self.ctl("-q", "stop", timeout=timeout)
        self.process.wait(timeout=timeout)

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()
        self.await_startup()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Whatever state it is in: the whole process group (the VM and its helper processes)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        text = []
        for path in sorted((self.base / "log").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            text.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(text)


@dataclass
class RabbitCluster:
    nodes: list[RabbitNode]
    root: Path
    _stopped: bool = field(default=False, repr=False)

    def failover_url(self, *, first: int = 0) -> str:
        """Every node's URL, `;`-separated (Celery's failover list), starting with node `first`."""
        order = self.nodes[first:] + self.nodes[:first]
        return ";".join(node.url for node in order)

    def node_named(self, name: str) -> RabbitNode:
        return next(node for node in self.nodes if node.name == name)

    def running_nodes(self, via: RabbitNode | None = None) -> list[str]:
        via = via or next(node for node in self.nodes if node.running())
        status = json.loads(via.ctl("-q", "cluster_status", "--formatter", "json"))
        return sorted(status["running_nodes"])

    def queue_leader(self, queue: str, *, via: RabbitNode | None = None) -> RabbitNode:
        """The node holding the quorum queue's leader."""
        via = via or next(node for node in self.nodes if node.running())
        rows = json.loads(
            via.ctl("-q", "list_queues", "name", "leader", "members", "--formatter", "json")
        )
        [row] = [r for r in rows if r["name"] == queue]
        return self.node_named(row["leader"])

    def stop(self) -> None:
        """Stop every node and delete its directories, whatever state they are in."""
        if self._stopped:
            return
        self._stopped = True
        _in_parallel(_stop_quietly, self.nodes)
        shutil.rmtree(self.root, ignore_errors=True)


def _stop_quietly(node: RabbitNode) -> None:
    with contextlib.suppress(Exception):
        node.stop(timeout=20)
    node.kill()


def start_cluster(size: int) -> RabbitCluster:
    """`size` nodes booted side by side; nodes 2.. join node 1's cluster."""
    root = Path(tempfile.mkdtemp(prefix="caly-rabbit-"))
    tag = secrets.token_hex(3)
    cookie = root / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(20))
    cookie.chmod(0o400)
    ports = free_ports(2 * size)
    nodes = [
        RabbitNode(
            name=f"caly-{tag}-{n}@localhost",
            port=ports[2 * n - 2],
            dist_port=ports[2 * n - 1],
            home=root,
            base=root / f"node{n}",
        )
        for n in range(1, size + 1)
    ]
    cluster = RabbitCluster(nodes=nodes, root=root)
    try:
        _in_parallel(RabbitNode.first_boot, nodes)
        first, rest = nodes[0], nodes[1:]
        # One at a time: nodes joining at once race in the cluster's schema (a join then fails
        # with `schema_prepare` aborted).
        for node in rest:
            _join(node, first)
        if rest:
            wait_for(
                lambda: cluster.running_nodes(via=first) == sorted(n.name for n in nodes),
                timeout=30,
                interval=0.2,
                what="every node to be running in the cluster",
            )
    except BaseException:
        cluster.stop()
        raise
    return cluster


def free_ports(count: int) -> list[int]:
    """`count` different free loopback ports (held together while chosen, so no two are equal)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _in_parallel(work, items) -> None:
    """`work(item)` for every item, each in a thread; raises the first error once all are done."""
    errors: list[BaseException] = []

    def run(item):
        try:
            work(item)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _join(node: RabbitNode, first: RabbitNode) -> None:
    node.ctl("-q", "stop_app")
    node.ctl("-q", "join_cluster", first.name)
    node.ctl("-q", "start_app")
    node.await_startup()
