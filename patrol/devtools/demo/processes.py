"""The demo's children: each a `patrol` subcommand run with this interpreter, its output in a log
file, in its own process group, and sent SIGTERM if the demo itself dies."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CHILD_STOP_TIMEOUT_SECONDS = 10.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # Linux: the child gets SIGTERM if the demo itself is killed (even with SIGKILL).
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class ChildProcess:
    """A `patrol` subcommand run with this interpreter, its output in a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        # Started from the event loop's thread: the parent-death signal follows the thread.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "patrol.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: Ctrl-C reaches the demo only, which stops children in order.
                process_group=0,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        return self

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = CHILD_STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM, then SIGKILL once `timeout` has passed; returns when the process is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"


def child_env(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of every child: the user's, minus what this run decides, plus that."""
    env = {k: v for k, v in base.items() if not k.startswith("PATROL_TOPIC_")}
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env
