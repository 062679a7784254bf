"""pyproject.toml (pip) and environment.yml (conda) ask for the same packages, and torch stays pinned."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [req for group in project.get("optional-dependencies", {}).values() for req in group]
    return {req.replace(" ", "") for req in project["dependencies"] + extras}


def _conda_pip_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    return {line.split("- ", 1)[1].replace(" ", "") for line in lines[start + 1:] if line.startswith("      - ")}


def test_environment_yml_matches_pyproject():
    pip, conda = _pyproject_requirements(), _conda_pip_requirements()
    assert pip == conda, f"only in pyproject.toml: {sorted(pip - conda)}; only in environment.yml: {sorted(conda - pip)}"


def test_torch_is_pinned_exactly():
    torch_reqs = [req for req in _pyproject_requirements() if re.match(r"torch\b", req)]
    assert torch_reqs == ["torch==2.13.0"], f"torch must be pinned to 2.13.0 (a range pulls a CUDA build): {torch_reqs}"
