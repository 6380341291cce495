"""Waiting on a local process: a free port to give it, and its HTTP page answering.

Shared by `patrol replay` (which runs a worker of its own and waits for its `/readyz`) and the
development tools (demo, bench, chaos, soak, tests); `tests/unit/test_layers.py` keeps
production code off `patrol.devtools`.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class ExitedWaiting(RuntimeError):
    """What `wait_http` waited on exited (or `alive()` turned false) before the page answered."""


def wait_http(
    url: str,
    timeout: float = 60.0,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.25,
) -> float:
    """Until `url` answers 200, polled every `interval` s; returns time.monotonic() of that
    answer. Raises ExitedWaiting at once when `proc` exits or `alive()` is false, TimeoutError
    after `timeout` s; both say what the page last answered."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ExitedWaiting(
                f"process exited with {proc.returncode} before {url} answered ({last})"
            )
        if alive is not None and not alive():
            raise ExitedWaiting(f"exited before {url} answered 200 ({last})")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return time.monotonic()
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(interval)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s (last: {last})")
