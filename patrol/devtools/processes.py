"""`patrol` subcommands run as child processes by the demo, the bench and the integration tests:
this interpreter, output in a log file, SIGTERM then SIGKILL to stop. (The worker's own
children, the intake and the SMS sender, are production and live in `patrol.worker.children`.)"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

STOP_TIMEOUT_SECONDS = 20.0
# What a child of a test or bench run keeps of the caller's PATROL_* settings: the cluster, and
# the marker by which `scripts/with-test-services` finds what a run left behind.
KEPT_SETTINGS = ("PATROL_KAFKA_BOOTSTRAP", "PATROL_TEST_RUN")


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # Linux: the child gets SIGTERM if its parent is killed (even with SIGKILL).
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def patrol_env(
    overrides: Mapping[str, str],
    *,
    drop: str = "PATROL_",
    keep: Iterable[str] = KEPT_SETTINGS,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The caller's environment without the variables starting with `drop` (but `keep`), plus
    `overrides`: a child decides its settings from what it is given, not from leftovers."""
    kept = set(keep)
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith(drop) or k in kept}
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class PatrolProcess:
    """A `patrol` subcommand run with this interpreter, its output in a log file.

    `own_group` puts it in a process group of its own (a terminal's Ctrl-C then reaches only the
    parent, which stops its children in order); `die_with_parent` has Linux send it SIGTERM
    when the parent dies."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    own_group: bool = False
    die_with_parent: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    """time.monotonic() just before the process was spawned."""
    started_wall: float = 0.0
    """time.time() at the same moment, to compare with wall-clock receive times."""

    def start(self) -> PatrolProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.started_wall = time.time()
            # From the caller's thread: a parent-death signal follows the thread that forked.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "patrol.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                process_group=0 if self.own_group else None,
                preexec_fn=_die_with_parent
                if self.die_with_parent and sys.platform == "linux"
                else None,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye to the group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM, then SIGKILL once `timeout` has passed; returns when the process is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"
