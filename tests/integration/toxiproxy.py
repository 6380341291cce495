"""A toxiproxy server for the network-fault tests: TCP proxies the test puts between patrol and
the broker or the SMS gateway, through which it adds latency or cuts the connection.

`scripts/deploy-tools` (run by `make test`) installs the server as `toxiproxy-server` in the
deploy cache's `bin`; PATROL_TOXIPROXY_SERVER names another binary. Everything here goes through
the server's HTTP API."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from patrol.devtools.processes import _die_with_parent
from patrol.waits import free_port


def server_binary() -> Path | None:
    """The toxiproxy server to run: PATROL_TOXIPROXY_SERVER, the one `scripts/deploy-tools`
    installs, or `toxiproxy-server` on PATH."""
    named = os.environ.get("PATROL_TOXIPROXY_SERVER")
    if named:
        return Path(named)
    cache = os.environ.get("PATROL_DEPLOY_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "patrol" / "deploy"
    )
    installed = Path(cache) / "bin" / "toxiproxy-server"
    if installed.exists():
        return installed
    found = shutil.which("toxiproxy-server")
    return Path(found) if found else None


@dataclass
class Proxy:
    """One proxy: `listen` (host:port) forwards to its upstream while enabled."""

    api: str
    name: str
    listen: str

    def _post(self, path: str, body: dict[str, Any]) -> None:
        httpx.post(f"{self.api}/proxies/{self.name}{path}", json=body, timeout=5).raise_for_status()

    def cut(self) -> None:
        """Close its connections and refuse new ones (the proxy stops listening)."""
        self._post("", {"enabled": False})

    def restore(self) -> None:
        self._post("", {"enabled": True})

    def add_latency(self, ms: int, stream: str = "downstream") -> str:
        """Delay every byte `ms` on one direction (downstream: the upstream's answers)."""
        name = f"latency-{stream}"
        self._post(
            "/toxics",
            {
                "name": name,
                "type": "latency",
                "stream": stream,
                "toxicity": 1.0,
                "attributes": {"latency": ms, "jitter": 0},
            },
        )
        return name

    def stall(self, ms: int) -> None:
        """Hold every byte `ms` each way: no connection refused or closed, nothing on time (a
        link that drops every packet until it heals, when TCP sends them again)."""
        self.add_latency(ms, "downstream")
        self.add_latency(ms, "upstream")

    def unstall(self) -> None:
        self.remove_toxic("latency-downstream")
        self.remove_toxic("latency-upstream")

    def remove_toxic(self, name: str) -> None:
        url = f"{self.api}/proxies/{self.name}/toxics/{name}"
        httpx.delete(url, timeout=5).raise_for_status()

    def toxics(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.api}/proxies/{self.name}/toxics", timeout=5)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result


@dataclass
class Toxiproxy:
    """A running toxiproxy server and its HTTP API."""

    process: subprocess.Popen[bytes]
    api: str

    def proxy(self, name: str, upstream: str, listen_port: int | None = None) -> Proxy:
        listen = f"127.0.0.1:{listen_port or free_port()}"
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        httpx.post(f"{self.api}/proxies", json=body, timeout=5).raise_for_status()
        return Proxy(self.api, name, listen)


@contextmanager
def toxiproxy_server(binary: Path, log_path: Path) -> Iterator[Toxiproxy]:
    """Run the server on a free port for the block; it inherits the test run's environment
    (its marker, for `scripts/with-test-services`) and gets SIGTERM if the test process dies."""
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(binary), "-host", "127.0.0.1", "-port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"toxiproxy exited with {process.returncode}; see {log_path}")
            try:
                httpx.get(f"{api}/version", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield Toxiproxy(process, api)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
