"""The `llmcourse` command: help for every subcommand, and `check`."""

import subprocess
import sys

import pytest

from llmcourse.cli import build_parser
from llmcourse.course.impl import solutions_folder

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmcourse", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command):
    proc = _run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"usage: llmcourse {command}" in proc.stdout


def test_check_reports_versions_and_device():
    proc = _run("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("python", "numpy", "torch", "jupyterlab", "ipywidgets", "matplotlib", "device", "exercises"):
        assert name in proc.stdout


def test_release_check_passes():
    solutions_folder()  # a student release has none: skipped there
    proc = _run("release", "--check")
    assert proc.returncode == 0, proc.stdout
