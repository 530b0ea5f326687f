"""Packaging: the pip pins and the conda file agree; the console script is declared."""

import re
import tomllib

import yaml
from conftest import REPO


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and "==" in line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version.strip()
    return pins


def test_requirements_and_conda_env_have_the_same_pins():
    pip = _pins((REPO / "envs" / "requirements.txt").read_text().splitlines())
    conda = yaml.safe_load((REPO / "envs" / "segmia.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == pip
    assert pip["torch"] == "2.14.1" and pip["torchvision"] == "0.29.1"


def test_every_requirement_is_pinned_exactly():
    for line in (REPO / "envs" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, f"unpinned requirement: {line}"


def test_console_script_and_package_location():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["segmia"] == "segmia.cli:main"
    assert project["tool"]["setuptools"]["packages"]["find"]["where"] == ["workflow"]
    assert (REPO / "workflow" / "segmia" / "cli.py").exists()


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in ci.splitlines()[-1]
    assert "make test" in readme
