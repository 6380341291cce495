"""The short chaos campaign (`make chaos` runs the long one): two workers of one app id under
SIGKILLs, a broker restart and a gateway failing a third of its requests, the simulated dispatch
system answering the tasks; every invariant the campaign prints must hold.

With this seed the broker restarts about two seconds after a SIGKILL: the case in which feedback
was lost while the faust app took it, before it moved to the intake (docs/reliability.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from patrol.devtools.processes import patrol_env

from .helpers import REPO

INVARIANTS = (
    "no violation lost",
    "no second task id on dispatch",
    "exactly one accepted SMS per case at the gateway",
    "no dead letters",
    "status records consistent",
    "both workers healthy",
)


def test_a_short_campaign_of_kills_and_gateway_faults_keeps_every_invariant(
    tmp_path: Path,
) -> None:
    # its own broker, which it restarts: the session's broker is left alone
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "patrol.devtools.chaos",
            *("--duration", "40", "--kills", "2", "--broker-restarts", "1"),
            *("--gateway-fault-seconds", "10", "--seed", "3", "--work-dir", str(tmp_path)),
        ],
        env=patrol_env({}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    output = result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, output
    for invariant in INVARIANTS:
        assert f"PASS  {invariant}:" in result.stdout, output
    assert "kills 2" in result.stdout, output
    assert "the broker is back" in result.stderr, output
