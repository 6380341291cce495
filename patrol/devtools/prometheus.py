"""A real Prometheus server for tests and `patrol demo`, plus the PromQL the project ships.

    with PrometheusServer(["127.0.0.1:6066"]) as prometheus:
        prometheus.wait_for_scrapes(2)
        prometheus.query('sum(patrol_detections_total{source_type="camera"})')

The server runs the Debian/upstream `prometheus` binary on a free local port, with a
temporary data directory and a config written by write_config(): job `patrol`, the given
targets, a short scrape interval and the alert rules of patrol/data/prometheus/alerts.yml.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from patrol.shipped import ALERT_RULES, DASHBOARD
from patrol.waits import free_port

JOB = "patrol"


class PrometheusError(RuntimeError):
    """Prometheus did not start, stopped, or refused a query."""


def prometheus_available(binary: str = "prometheus") -> bool:
    """True when the Prometheus server binary is on PATH (or `binary` is a path to it)."""
    return shutil.which(binary) is not None


def write_config(
    directory: Path,
    targets: Sequence[str],
    *,
    scrape_interval: str = "1s",
    rule_files: Sequence[Path] = (ALERT_RULES,),
) -> Path:
    """Write `prometheus.yml` scraping job `patrol` at `targets` ("host:port"); return its path.

    Rule files that do not exist (e.g. a rules file given by path that is gone) are left out.
    """
    if not targets:
        raise ValueError("give at least one scrape target, e.g. 127.0.0.1:6066")
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(path.resolve()) for path in rule_files if path.is_file()],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "scrape_interval": scrape_interval,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }
    path = directory / "prometheus.yml"
    # JSON is valid YAML, and needs no YAML library here.
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


class PrometheusServer:
    """A Prometheus process scraping patrol workers; a (async) context manager."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        scrape_interval: str = "1s",
        port: int | None = None,
        host: str = "127.0.0.1",
        data_dir: Path | None = None,
        rule_files: Sequence[Path] = (ALERT_RULES,),
        binary: str = "prometheus",
    ) -> None:
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.host = host
        self.port = port
        self.rule_files = list(rule_files)
        self.binary = binary
        self._data_dir = data_dir
        self._owns_data_dir = data_dir is None
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise PrometheusError("Prometheus has not been started")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self.data_dir / "prometheus.log"

    def start(self, timeout: float = 30.0) -> None:
        """Start Prometheus and return once it answers /-/ready."""
        if self._process is not None:
            raise PrometheusError(f"Prometheus is already running at {self.url}")
        executable = shutil.which(self.binary)
        if executable is None:
            raise PrometheusError(
                f"{self.binary!r} not found on PATH; "
                "install it (Debian: apt-get install prometheus)"
            )
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="patrol-prometheus-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.host)
        config = write_config(
            self.data_dir,
            self.targets,
            scrape_interval=self.scrape_interval,
            rule_files=self.rule_files,
        )
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    executable,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                    f"--web.listen-address={self.host}:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._client = httpx.Client(base_url=self.url, timeout=5.0)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self._client is not None and self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusError(
                    f"Prometheus exited with code {self._process.returncode} while starting "
                    f"on {self.host}:{self.port}; its log ends with:\n{self._log_tail()}"
                )
            try:
                if self._client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        raise PrometheusError(
            f"Prometheus at {self.url} was not ready after {timeout:.0f}s; "
            f"its log ends with:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate Prometheus, wait for it, and remove a data directory it created."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout)
            self._process = None
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Evaluate an instant query; one {"metric", "value"} per series (a scalar gives one)."""
        if self._client is None:
            raise PrometheusError("Prometheus has not been started")
        params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
        return _result(expr, self._client.get("/api/v1/query", params=params))

    async def aquery(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """query() without blocking the event loop."""
        params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as client:
            return _result(expr, await client.get("/api/v1/query", params=params))

    def rule_groups(self) -> list[dict[str, Any]]:
        """The loaded rule groups with each rule's health, from /api/v1/rules."""
        if self._client is None:
            raise PrometheusError("Prometheus has not been started")
        response = self._client.get("/api/v1/rules")
        response.raise_for_status()
        groups: list[dict[str, Any]] = response.json()["data"]["groups"]
        return groups

    def wait_for_scrapes(self, count: int = 2, timeout: float = 30.0) -> None:
        """Return once every target has been scraped `count` times, successfully or not."""
        expr = f'count_over_time(up{{job="{JOB}"}}[1h])'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            scrapes = [float(series["value"][1]) for series in self.query(expr)]
            if len(scrapes) >= len(self.targets) and min(scrapes) >= count:
                return
            time.sleep(0.2)
        raise PrometheusError(
            f"targets {self.targets} were not scraped {count} times within {timeout:.0f}s; "
            f"see {self.url}/targets"
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def _result(expr: str, response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    if body.get("status") != "success":
        raise PrometheusError(
            f"query {expr!r} failed: {body.get('errorType')}: {body.get('error')}"
        )
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One PromQL target of a dashboard panel, with Grafana's variables filled in."""

    panel: str
    ref_id: str
    expr: str


def dashboard_queries(path: Path = DASHBOARD, rate_interval: str = "1m") -> list[PanelQuery]:
    """Every target expression of the Grafana dashboard, ready to send to Prometheus."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            queries.append(PanelQuery(panel["title"], target.get("refId", "A"), expr))
    return queries


_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan"}
)
_NOT_METRICS = re.compile(
    r'"(?:[^"\\]|\\.)*"'  # string literals
    r"|\{[^}]*\}"  # label matchers
    r"|\[[^\]]*\]"  # range and subquery durations
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"  # label lists
)
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels left out)."""
    stripped = _NOT_METRICS.sub(" ", expr)
    return {name for name in _IDENTIFIER.findall(stripped) if name not in _PROMQL_KEYWORDS}
