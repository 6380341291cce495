"""patrol as a user installs it: a wheel built from this checkout, in a fresh venv, runs the
local broker and the worker from its own files, not from the checkout (issue 20)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from patrol.waits import free_port

from .helpers import wait_http

REPO = Path(__file__).resolve().parents[2]
# What the build reads: the project table, the readme it names, the package.
BUILD_INPUTS = ("pyproject.toml", "README.md", "patrol")


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 120.0) -> str:
    """stdout of a command that must succeed; its output is in the message when it does not."""
    done = subprocess.run(
        [str(part) for part in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def user_env(venv: Path, **settings: str) -> dict[str, str]:
    """A user's environment with the venv first on PATH: no PATROL_* of the test run (but its
    marker, so leftovers are found), no Python path that could reach the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("PATROL_") or k == "PATROL_TEST_RUN")
        and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(settings)
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of this checkout and its dependencies from the index."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    # A copy, so the build neither writes build/ into the checkout nor packs a stale build/lib.
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    env = user_env(root / "venv")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "-q", "--no-deps", "-w", root / "dist", source], root, env, timeout=300)
    (wheel,) = (root / "dist").glob("patrol-*.whl")
    # Without a pip of its own: this run's pip installs into it (--python), which saves the
    # seconds ensurepip takes.
    run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], root, env)
    run([*pip, "--python", root / "venv/bin/python", "install", "-q", wheel], root, env, 300)
    return root / "venv"


def test_the_installed_package_is_the_venvs_and_carries_its_data_files(venv: Path) -> None:
    probe = (
        "import json, patrol, patrol.shipped as s; print(json.dumps({'package': patrol.__file__, "
        "'files': {str(p): p.is_file() for p in (s.KAFKA_POM, s.ALERT_RULES, s.DASHBOARD)}}))"
    )
    found = json.loads(run([venv / "bin/python", "-c", probe], venv.parent, user_env(venv)))
    assert Path(found["package"]).is_relative_to(venv), found["package"]
    for path, is_file in found["files"].items():
        assert Path(path).is_relative_to(venv), path
        assert is_file, f"{path} is not in the installed package"


def test_the_installed_worker_explains_its_configuration(venv: Path) -> None:
    out = run([venv / "bin/patrol", "worker", "--help"], venv.parent, user_env(venv))
    assert "Run the stream-processing service." in out
    assert "PATROL_KAFKA_BOOTSTRAP" in out and "PATROL_SMS_URL" in out


@pytest.fixture
def worker_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "worker.log"
    yield path
    if path.exists():
        print(f"worker log:\n{path.read_text()[-4000:]}")


def test_the_installed_patrol_runs_the_broker_and_a_worker(
    venv: Path, tmp_path: Path, worker_log: Path
) -> None:
    patrol = venv / "bin/patrol"
    port = free_port()
    where = ["--port", str(port), "--state-dir", str(tmp_path / "broker")]
    env = user_env(venv)
    worker: subprocess.Popen[bytes] | None = None
    try:
        started = run([patrol, "broker", "start", *where], tmp_path, env, timeout=180)
        assert started.startswith("started"), started
        status = run([patrol, "broker", "status", *where], tmp_path, env)
        assert "broker: running" in status and f"bootstrap: 127.0.0.1:{port}" in status

        web_port = free_port()
        worker_env = user_env(
            venv,
            PATROL_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
            PATROL_APP_ID=f"wheel-{uuid.uuid4().hex[:6]}",
            PATROL_DATA_DIR=str(tmp_path / "worker"),
            PATROL_WEB_PORT=str(web_port),
            PATROL_PARTITIONS="2",
        )
        with worker_log.open("wb") as log:
            worker = subprocess.Popen(
                [str(patrol), "worker"],
                cwd=tmp_path,
                env=worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        # Ready means the shipped zones and routing loaded, topics exist and partitions are held.
        wait_http(f"http://127.0.0.1:{web_port}/readyz", timeout=90, proc=worker)
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        stop = subprocess.run(
            [str(patrol), "broker", "stop", *where],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert stop.stdout.strip() == "stopped", stop.stdout + stop.stderr
    after = subprocess.run(
        [str(patrol), "broker", "status", *where],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert after.returncode == 3 and "broker: not running" in after.stdout
