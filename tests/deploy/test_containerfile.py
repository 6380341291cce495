"""hadolint passes the shipped Containerfiles and fails a broken one."""

from __future__ import annotations

from pathlib import Path

from .tools import REPO, run

CHECK = REPO / "scripts/deploy-check-containerfile"
CONTAINERFILE = REPO / "deploy/container/Containerfile"


def test_the_shipped_containerfiles_pass_hadolint() -> None:
    done = run([CHECK], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_containerfile_with_an_untagged_base_and_a_cd_fails_hadolint(tmp_path: Path) -> None:
    broken = tmp_path / "Containerfile"
    text = CONTAINERFILE.read_text()
    text = text.replace("FROM ${BASE_IMAGE}\n", "FROM python\n", 1)
    text = text.replace("WORKDIR /var/lib/patrol\n", "RUN cd /var/lib/patrol && ls\n")
    broken.write_text(text)
    done = run([CHECK, broken], check=False)
    assert done.returncode != 0
    assert "DL3006" in done.stdout  # untagged image
    assert "DL3003" in done.stdout  # cd instead of WORKDIR
