"""The patrol processes a benchmark runs: worker(s) and the stub SMS gateway."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from patrol.devtools import processes
from patrol.devtools.processes import PatrolProcess, patrol_env
from patrol.settings import topic_env, topic_names
from patrol.waits import free_port

REPO = Path(__file__).resolve().parents[1]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without PATROL_* settings (but the broker and the run marker)."""
    return patrol_env(extra)


@dataclass
class BenchTopics:
    """Fresh topic names and app id for one scenario, as PATROL_* variables."""

    label: str
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def name(self, what: str) -> str:
        """A scenario topic of the bench's own (the raw loop's output)."""
        return f"{self.app_id}.{what}"

    @property
    def camera(self) -> str:
        return topic_names(self.app_id)["camera"]

    @property
    def drone(self) -> str:
        return topic_names(self.app_id)["drone"]

    @property
    def dispatch(self) -> str:
        return topic_names(self.app_id)["dispatch"]

    @property
    def feedback(self) -> str:
        return topic_names(self.app_id)["feedback"]

    @property
    def status(self) -> str:
        return topic_names(self.app_id)["status"]

    @property
    def app_id(self) -> str:
        return f"bench-{self.label}-{self.suffix}"

    @property
    def inputs(self) -> dict[str, str]:
        """The detection topics, by `BenchRecord.topic_kind`."""
        return {"camera": self.camera, "drone": self.drone}

    @property
    def all_inputs(self) -> dict[str, str]:
        """The detection topics and the feedback topic, by `BenchRecord.topic_kind`."""
        return {**self.inputs, "feedback": self.feedback}

    def env(self) -> dict[str, str]:
        return {**topic_env(self.app_id), "PATROL_APP_ID": self.app_id}


@dataclass
class BenchProcess(PatrolProcess):
    """A `patrol` subprocess of the bench, run from the checkout, whose memory it measures."""

    cwd: Path | None = REPO

    def rss_bytes(self) -> int:
        """Resident memory of the process and its children (the worker's intake and SMS sender)."""
        return sum(self.rss_by_process().values())

    def rss_by_process(self) -> dict[str, int]:
        """Resident memory of the process ("main") and of each child, by the module it runs
        (`python -m patrol.intake.process`), or by its pid."""
        process = psutil.Process(self.pid)
        sizes = {"main": int(process.memory_info().rss)}
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                sizes[module_of(child)] = int(child.memory_info().rss)
        return sizes


def module_of(child: psutil.Process) -> str:
    """A process by the module it runs (`python -m patrol.intake.process`), or by its pid."""
    with contextlib.suppress(psutil.Error):
        args = child.cmdline()
        if "-m" in args[:-1]:
            return args[args.index("-m") + 1]
    return str(child.pid)


class BenchError(RuntimeError):
    """A benchmark step that could not complete; the message says which and why."""


def wait_http(url: str, timeout: float, process: BenchProcess, interval: float = 0.05) -> float:
    """Poll until `url` answers 200; returns time.monotonic() of that answer."""
    try:
        return processes.wait_http(url, timeout, alive=process.alive, interval=interval)
    except processes.ExitedWaiting:
        raise BenchError(f"{' '.join(process.args)} exited:\n{process.log_tail()}") from None
    except TimeoutError as exc:
        raise BenchError(str(exc)) from None


_HTTP = httpx.Client(timeout=5.0)


@dataclass
class Worker:
    """`patrol worker` on its own web port and data dir."""

    process: BenchProcess
    port: int

    @classmethod
    def start(
        cls, topics: BenchTopics, *, sms_url: str, base: Path, name: str, **env: str
    ) -> Worker:
        port = free_port()
        worker_env = clean_env(
            {
                **topics.env(),
                "PATROL_SMS_URL": sms_url,
                "PATROL_WEB_PORT": str(port),
                "PATROL_DATA_DIR": str(base / f"{name}-data"),
                "PATROL_LOG_LEVEL": "warning",
                **env,
            }
        )
        process = BenchProcess(name, ["worker"], worker_env, base / f"{name}.log").start()
        return cls(process, port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.05) -> float:
        return wait_http(f"{self.url}/readyz", timeout, self.process, interval)

    def metrics(self, *names: str, **labels: str) -> dict[str, float]:
        """Each sample name summed over the samples carrying these labels (all, if none);
        only the metrics `names` (all, if none) are asked for. The client is kept: a new
        one per poll (TLS context and all) cost the bench a tenth of a core at 10 polls/s."""
        text = _HTTP.get(f"{self.url}/metrics", params={"name[]": list(names)}).text
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums

    def metric(self, name: str) -> float:
        return self.metrics(name).get(name, 0.0)


@dataclass
class Gateway:
    process: BenchProcess
    url: str

    @classmethod
    def start(cls, base: Path) -> Gateway:
        port = free_port()
        process = BenchProcess(
            "sms-gateway",
            ["sms-gateway", "--port", str(port), "--log-level", "warning"],
            clean_env({}),
            base / "sms-gateway.log",
        ).start()
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", 30, process)
        return cls(process, url)
