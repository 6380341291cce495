"""A local Apache Kafka (KRaft, combined broker + controller) for development and tests: one
node (`LocalBroker`), or a cluster of several (`LocalCluster`) to test the loss of a broker.

The broker's jars come from Maven Central through `patrol/data/kafka/pom.xml` (package data)
and are cached under the user's cache directory, so the second start downloads nothing.
Everything a broker writes (data, log, pid file, generated configuration) lives in one state
directory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patrol.settings import user_cache_dir
from patrol.shipped import KAFKA_POM

MIN_JAVA = 17
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 30.0


class BrokerError(RuntimeError):
    """A launcher failure a person can act on: what went wrong and what to do."""


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    version: str
    state_dir: Path
    log_file: Path

    def describe(self) -> str:
        state = f"running (pid {self.pid})" if self.running else "not running"
        return (
            f"broker: {state}\n"
            f"bootstrap: {self.bootstrap}\n"
            f"version: Apache Kafka {self.version} (KRaft)\n"
            f"state dir: {self.state_dir}\n"
            f"log: {self.log_file}"
        )


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


def kafka_version(pom: Path = KAFKA_POM) -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text("utf-8"))
    if not match:
        raise BrokerError(f"{pom} does not pin <kafka.version>; add it to the <properties> block")
    return match.group(1).strip()


def check_java(which: Callable[[str], str | None] = shutil.which, run: Runner = _run) -> str:
    """Path of a `java` of version 17 or newer, or a BrokerError saying how to get one."""
    java = which("java")
    if java is None:
        raise BrokerError(
            "Java was not found on PATH. The local Kafka broker needs a JDK 17 or newer: "
            "install one (e.g. `apt-get install openjdk-17-jre-headless`) or point "
            "PATROL_KAFKA_BOOTSTRAP at an existing cluster."
        )
    result = run([java, "-version"])
    text = result.stderr + result.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise BrokerError(
            f"could not read the Java version from `{java} -version`: {text.strip()!r}"
        )
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise BrokerError(
            f"Java {major} at {java} is too old: Apache Kafka 4 needs Java {MIN_JAVA} or newer. "
            "Install a newer JDK and put it first on PATH."
        )
    return java


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BrokerError(
                f"port {port} on {host} is already taken ({exc.strerror}). Stop whatever listens "
                f"there (`ss -ltnp 'sport = :{port}'` shows it) or choose another with "
                "`patrol broker start --port N`."
            ) from exc


def fetch_jars(
    pom: Path = KAFKA_POM,
    cache_root: Path | None = None,
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = _run,
) -> Path:
    """The directory holding the broker's jars, resolving them with Maven on first use."""
    version = kafka_version(pom)
    libs = (cache_root or user_cache_dir() / "kafka") / version / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = which("mvn")
    if mvn is None:
        raise BrokerError(
            f"the Apache Kafka {version} jars are not cached yet and Maven (`mvn`) is not on "
            "PATH to fetch them. Install Maven (e.g. `apt-get install maven`) and retry."
        )
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    result = run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ]
    )
    if result.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BrokerError(
            f"Maven could not fetch the Apache Kafka {version} jars ({pom}). Check that Maven "
            f"Central is reachable and the version exists. Maven said:\n{tail}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(version)
    return libs


SERVER_PROPERTIES = """\
# Generated by `patrol broker start`; edit the launcher, not this file.
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}{secure_listener}{proxied_listener}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}{secure_listener}{proxied_advertised}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,PROXIED:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=true
# Kafka's own topics get one replica per node (up to three), so groups and transactions work
# on one broker and survive the loss of one of three.
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=10
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
# Room for oversized test messages, so the worker can dead-letter them.
message.max.bytes=8388608
replica.fetch.max.bytes=8388608
log.retention.hours=168
{extra}"""

CLUSTER_NODE_PROPERTIES = """\
# A node of a local cluster: a few threads each, as three of them share the machine.
num.network.threads=2
num.io.threads=2
background.threads=2
num.replica.fetchers=1
"""


SECURE_LISTENER_PROPERTIES = """\
# The SASL_SSL listener: TLS with a certificate of the local CA (tls/ca.pem), SCRAM-SHA-512
# users created at format time, PLAIN users listed here.
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\\
  org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=\\
  org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
listener.name.sasl_ssl.ssl.client.auth=none
"""


@dataclass(frozen=True, slots=True)
class SecureListener:
    """A SASL_SSL listener on `port` beside the PLAINTEXT one, for `users` (name: password),
    each a SCRAM-SHA-512 and a PLAIN user. Its certificate is signed by a CA made for the
    broker (`tls/ca.pem` in the state directory: a client's PATROL_KAFKA_SSL_CAFILE)."""

    port: int
    users: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ProxiedListener:
    """A PLAINTEXT listener on `port` that the broker advertises as `advertised` (the
    `host:port` of a TCP proxy forwarding to `port`): a client that bootstraps through the proxy
    is told to reach the broker through it too, so the proxy carries all its traffic and can
    delay or cut it. The PLAINTEXT listener beside it is left as it is."""

    port: int
    advertised: str


def make_certificates(directory: Path) -> Path:
    """A self-signed CA and a broker certificate for 127.0.0.1 and localhost, made with
    `openssl` in `directory` (kept when present); returns the CA's PEM file."""
    ca, keystore = directory / "ca.pem", directory / "broker.pem"
    if ca.exists() and keystore.exists():
        return ca
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BrokerError(
            "`openssl` is not on PATH; the SASL_SSL listener needs it to make its certificates "
            "(e.g. `apt-get install openssl`)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=patrol local CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "broker.key",
            "-out",
            "broker.csr",
        ],
        [
            "x509",
            "-req",
            "-in",
            "broker.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "san.ext",
            "-out",
            "broker.crt",
        ],
    ]
    for step in steps:
        result = subprocess.run(
            [openssl, *step], cwd=directory, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BrokerError(f"openssl {step[0]} failed: {result.stderr.strip()[-500:]}")
    keystore.write_text(
        (directory / "broker.key").read_text() + (directory / "broker.crt").read_text()
    )
    return ca


@dataclass(frozen=True, slots=True)
class Quorum:
    """A node's place in a local multi-node KRaft cluster, where every node is a broker and a
    controller (a voter): the same cluster id and voters for all, its own node id."""

    node_id: int
    voters: str
    cluster_id: str
    size: int


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class LocalBroker:
    """One local broker: `start`, `stop`, `status`, all keyed by its state directory."""

    def __init__(
        self,
        state_dir: Path,
        port: int = 9092,
        controller_port: int | None = None,
        pom: Path = KAFKA_POM,
        heap: str = "1g",
        quorum: Quorum | None = None,
        secure: SecureListener | None = None,
        proxied: ProxiedListener | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.secure = secure
        self.proxied = proxied
        self.port = port
        self._controller_port = controller_port
        self.pom = pom
        self.heap = heap
        self.quorum = quorum

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    def _choose_controller_port(self) -> int:
        """The KRaft controller's port: as asked, as recorded by an earlier start, or a free one.

        Choosing a free port (not port + 1) lets brokers on neighbouring ports run side by side.
        """
        if self._controller_port is not None:
            return self._controller_port
        recorded = self.state_dir / "controller.port"
        try:
            return int(recorded.read_text().strip())
        except (OSError, ValueError):
            pass
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        self.state_dir.mkdir(parents=True, exist_ok=True)
        recorded.write_text(str(port))
        return port

    def _recorded_port(self) -> int | None:
        path = self.state_dir / "broker.port"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        cmdline = Path(f"/proc/{pid}/cmdline")
        with contextlib.suppress(OSError):
            if b"kafka.Kafka" not in cmdline.read_bytes():
                return None  # the pid was reused by something else
        return pid

    def status(self) -> BrokerStatus:
        pid = self.running_pid()
        port = self._recorded_port() if pid else None
        bootstrap = f"127.0.0.1:{port}" if port else self.bootstrap
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            bootstrap=bootstrap,
            version=kafka_version(self.pom),
            state_dir=self.state_dir,
            log_file=self.log_file,
        )

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> tuple[BrokerStatus, bool]:
        """Start the broker unless it runs; returns its status and whether this call started it."""
        current = self.status()
        if current.running:
            return current, False
        proc = self.launch()
        self.wait_ready(proc, timeout)
        return self.status(), True

    def server_properties(self, controller_port: int) -> str:
        quorum = self.quorum
        size = 1 if quorum is None else quorum.size
        return SERVER_PROPERTIES.format(
            node_id=1 if quorum is None else quorum.node_id,
            voters=f"1@127.0.0.1:{controller_port}" if quorum is None else quorum.voters,
            port=self.port,
            controller_port=controller_port,
            data_dir=self.data_dir,
            replication=min(3, size),
            min_isr=min(2, size),
            secure_listener=""
            if self.secure is None
            else f",SASL_SSL://127.0.0.1:{self.secure.port}",
            proxied_listener=""
            if self.proxied is None
            else f",PROXIED://127.0.0.1:{self.proxied.port}",
            proxied_advertised=""
            if self.proxied is None
            else f",PROXIED://{self.proxied.advertised}",
            extra=("" if quorum is None else CLUSTER_NODE_PROPERTIES) + self._secure_properties(),
        )

    @property
    def ca_file(self) -> Path:
        """The CA a client of the SASL_SSL listener trusts (PATROL_KAFKA_SSL_CAFILE)."""
        return self.state_dir / "tls" / "ca.pem"

    def _secure_properties(self) -> str:
        if self.secure is None:
            return ""
        make_certificates(self.ca_file.parent)
        plain = "".join(f' user_{name}="{password}"' for name, password in self.secure.users)
        return SECURE_LISTENER_PROPERTIES.format(
            plain_users=plain, keystore=self.ca_file.parent / "broker.pem"
        )

    def launch(self) -> subprocess.Popen[bytes]:
        """Spawn the broker process (formatting its storage on first use); do not wait for it.

        A node of a cluster answers only once a majority of the voters run, so a cluster
        launches all its nodes before it waits for any."""
        java = check_java()
        check_port_free(self.port)
        controller_port = self._choose_controller_port()
        check_port_free(controller_port)
        libs = fetch_jars(self.pom)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        props = self.state_dir / "server.properties"
        # Java reads a properties file as ISO 8859-1: anything else (a password) as \uXXXX
        text = self.server_properties(controller_port)
        props.write_text("".join(c if ord(c) < 128 else f"\\u{ord(c):04x}" for c in text))
        log4j = self.state_dir / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES.format(log_file=self.log_file))
        classpath = f"{libs}/*"
        java_opts = [f"-Dlog4j2.configurationFile={log4j}"]
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, classpath, java_opts, props)
        if self.secure is not None:
            check_port_free(self.secure.port)
        if self.proxied is not None:
            check_port_free(self.proxied.port)
        out = (self.state_dir / "broker.out").open("ab")
        proc = subprocess.Popen(
            [
                java,
                f"-Xmx{self.heap}",
                f"-Xms{min(self.heap, '256m', key=_heap_bytes)}",
                "-XX:+UseG1GC",
                # JIT to C1 only. This broker lives for a test run, a demo or a bench, and the
                # C2 compiler spent it compiling: bursts of up to 94 ms of a core (`perf sched`
                # in the latency bench), during which the worker waited for a CPU. C1 code is
                # slower at its peak, which a broker that lives for minutes never reaches.
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
                *java_opts,
                "-cp",
                classpath,
                "kafka.Kafka",
                str(props),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the broker outlives the `patrol broker start` command
        )
        out.close()
        self.pid_file.write_text(str(proc.pid))
        (self.state_dir / "broker.port").write_text(str(self.port))
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Until the launched broker answers a metadata request; stops it if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"the broker exited with code {proc.returncode} while starting; "
                    f"see {self.log_file} and {self.state_dir / 'broker.out'}"
                )
            if answers_metadata(self.bootstrap):
                return
            time.sleep(0.5)
        self.stop()
        raise BrokerError(
            f"the broker did not answer a metadata request on {self.bootstrap} within "
            f"{timeout:.0f} s; see {self.log_file}"
        )

    def _format(self, java: str, classpath: str, java_opts: list[str], props: Path) -> None:
        quorum = self.quorum
        result = _run(
            [
                java,
                *java_opts,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                # one argument with "=": a cluster id may start with "-"
                "--cluster-id=" + (new_cluster_id() if quorum is None else quorum.cluster_id),
                "-c",
                str(props),
                *(
                    arg
                    for name, password in (self.secure.users if self.secure else ())
                    for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
                ),
            ]
        )
        if result.returncode != 0:
            raise BrokerError(
                "formatting the KRaft storage failed; the tool said:\n"
                + (result.stdout + result.stderr).strip()[-2000:]
            )

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after `timeout`); False if none ran."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """SIGKILL: a broker lost at once, with no controlled shutdown; False if none ran."""
        pid = self.running_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True


CLUSTER_FILE = "cluster.json"


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    nodes: tuple[BrokerStatus, ...]

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def describe(self) -> str:
        up = sum(node.running for node in self.nodes)
        lines = [
            f"cluster: {up} of {len(self.nodes)} nodes running",
            f"bootstrap: {self.bootstrap}",
            f"version: Apache Kafka {self.nodes[0].version} (KRaft)",
        ]
        for number, node in enumerate(self.nodes, 1):
            state = f"running (pid {node.pid})" if node.running else "not running"
            lines.append(f"node {number}: {state}, {node.bootstrap}, log {node.log_file}")
        return "\n".join(lines)


class LocalCluster:
    """A local KRaft cluster of `nodes` brokers, each also a controller, on ports `port`,
    `port + 1`, …; node i keeps its state in `<state_dir>/node-i`.

    Its cluster id and controller ports are chosen at the first start and recorded in
    `<state_dir>/cluster.json`, so a node stopped (or killed) and started again rejoins."""

    def __init__(
        self,
        state_dir: Path,
        nodes: int = 3,
        port: int = 9092,
        pom: Path = KAFKA_POM,
        heap: str = "256m",
    ) -> None:
        if nodes < 2:
            raise BrokerError("a cluster has two nodes or more; one node is `LocalBroker`")
        self.state_dir = state_dir
        self.pom = pom
        self.heap = heap
        recorded = self._recorded()
        if recorded is not None:
            port, nodes = int(recorded["port"]), len(recorded["controller_ports"])
        self.port = port
        self.size = nodes

    def _recorded(self) -> dict[str, Any] | None:
        try:
            value = json.loads((self.state_dir / CLUSTER_FILE).read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _layout(self) -> dict[str, Any]:
        """The cluster id and controller ports: as recorded by an earlier start, or new."""
        recorded = self._recorded()
        if recorded is not None:
            return recorded
        ports: list[int] = []
        for _ in range(self.size):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                ports.append(int(sock.getsockname()[1]))
        layout = {"cluster_id": new_cluster_id(), "port": self.port, "controller_ports": ports}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / CLUSTER_FILE).write_text(json.dumps(layout))
        return layout

    @property
    def nodes(self) -> list[LocalBroker]:
        layout = self._recorded()
        if layout is None:
            # never started: the nodes as they will be, for status and stop
            return [
                LocalBroker(self.state_dir / f"node-{i}", port=self.port + i - 1, pom=self.pom)
                for i in range(1, self.size + 1)
            ]
        controllers = [int(p) for p in layout["controller_ports"]]
        voters = ",".join(f"{i}@127.0.0.1:{p}" for i, p in enumerate(controllers, 1))
        return [
            LocalBroker(
                self.state_dir / f"node-{i}",
                port=self.port + i - 1,
                controller_port=controller,
                pom=self.pom,
                heap=self.heap,
                quorum=Quorum(i, voters, str(layout["cluster_id"]), len(controllers)),
            )
            for i, controller in enumerate(controllers, 1)
        ]

    def node(self, node_id: int) -> LocalBroker:
        return self.nodes[node_id - 1]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def status(self) -> ClusterStatus:
        return ClusterStatus(tuple(node.status() for node in self.nodes))

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> tuple[ClusterStatus, bool]:
        """Start the nodes that do not run, and wait until the cluster's metadata lists every
        node; returns its status and whether this call started any node."""
        self._layout()
        launched = [(node, node.launch()) for node in self.nodes if node.running_pid() is None]
        try:
            deadline = time.monotonic() + timeout
            for node, proc in launched:
                node.wait_ready(proc, max(1.0, deadline - time.monotonic()))
            while brokers_in_metadata(self.bootstrap) < self.size:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"the cluster's metadata does not list all {self.size} nodes after "
                        f"{timeout:.0f} s; see the server.log of each node in {self.state_dir}"
                    )
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self.status(), bool(launched)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
        """Stop every node (SIGTERM, then SIGKILL); False if none ran.

        All at once: a node stopped after the others waits in vain for a quorum of controllers
        to hand its leadership to."""
        with ThreadPoolExecutor(max_workers=self.size) as pool:
            stopped = list(pool.map(lambda node: node.stop(timeout), self.nodes))
        return any(stopped)


def local_kafka(
    state_dir: Path, port: int = 9092, nodes: int | None = None
) -> LocalBroker | LocalCluster:
    """The local broker or cluster kept in `state_dir`: a cluster when `nodes` > 1, or when
    `nodes` is not given and a cluster was started there before."""
    if nodes is None:
        nodes = 2 if (state_dir / CLUSTER_FILE).exists() else 1
    if nodes > 1:
        return LocalCluster(state_dir, nodes=nodes, port=port)
    return LocalBroker(state_dir, port=port)


def _heap_bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    unit = units.get(size[-1:].lower(), 1)
    return int(size[:-1] if unit > 1 else size) * unit


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if stat.read_text().split(")")[-1].split()[0] == "Z":
            return False  # a zombie has exited; nobody reaped it yet
    return True


def answers_metadata(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a Kafka broker at `bootstrap` answers a metadata request."""
    return brokers_in_metadata(bootstrap, timeout) > 0


def brokers_in_metadata(bootstrap: str, timeout: float = 3.0) -> int:
    """How many brokers the metadata from `bootstrap` lists (0: nobody answered)."""
    import logging

    from aiokafka.client import AIOKafkaClient

    # a broker still starting refuses connections; that is expected, not worth a log line
    quiet = logging.getLogger("aiokafka")
    previous = quiet.level
    quiet.setLevel(logging.CRITICAL)

    async def probe() -> int:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await asyncio.wait_for(client.bootstrap(), timeout)
            return len(client.cluster.brokers())
        except Exception:
            return 0
        finally:
            await client.close()

    try:
        return asyncio.run(probe())
    finally:
        quiet.setLevel(previous)
