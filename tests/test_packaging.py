"""Packaging: a wheel installed away from the repository carries configs/ (every config group composes there)
and the `ebt-forecast` script; the CLI hides only known-noisy warnings, not a user's own UserWarnings."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["model=medium", "think=implicit", "experiment=quick"]
COMPOSE = """
import json, sys
from importlib.resources import files
import ebt_forecast
from ebt_forecast.config import compose
app = compose("benchmark", sys.argv[1:])
print(json.dumps({"package": ebt_forecast.__file__, "configs": str(files("ebt_forecast.configs")), "app": repr(app)}))
"""


def env_with(**extra: str) -> dict[str, str]:
    """This environment, one thread, no launcher rank variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def sh(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output when it fails."""
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env or env_with(), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project built as a wheel (from a copy of its sources, offline) and installed with --target."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("ebt_forecast", "configs"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    sh(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist", src, cwd=root)
    (wheel,) = (root / "dist").glob("ebt_forecast-*.whl")
    sh(*pip, "install", "--no-deps", "--no-index", "--target", root / "site", wheel, cwd=root)
    return root / "site"


def test_package_list_holds_every_sub_package():
    """pyproject.toml lists packages by hand (configs/ maps into the package): none may be missing."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {"ebt_forecast.configs": "configs"}
    found = set(find_packages(str(REPO), include=["ebt_forecast*"])) | {"ebt_forecast.configs"}
    assert not found - set(tool["packages"]), f"add to pyproject.toml's packages: {sorted(found - set(tool['packages']))}"


@pytest.mark.filterwarnings("ignore:Using `json`-module:UserWarning")  # gluonts, on import
def test_installed_wheel_composes_config_groups_and_prints_usage(installed, tmp_path):
    """Away from the repository (another cwd, PYTHONPATH=the install) the installed copy is the one imported,
    its configs are its own, and model=, think=, experiment= compose exactly as in the repository."""
    env = env_with(PYTHONPATH=str(installed))
    proc = sh(sys.executable, "-c", COMPOSE, *OVERRIDES, cwd=tmp_path, env=env)
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(there["package"]).is_relative_to(installed)
    assert Path(there["configs"]).is_relative_to(installed)
    from ebt_forecast.config import compose, config_dir

    assert config_dir() == REPO / "configs"  # the editable install reads the one top-level copy
    assert there["app"] == repr(compose("benchmark", OVERRIDES))
    for chosen in ("dim=128", "depth=3", "gradient='implicit'", "name='quick'"):  # medium, implicit, quick
        assert chosen in there["app"]
    usage = sh(installed / "bin" / "ebt-forecast", "--help", cwd=tmp_path, env=env).stdout
    assert usage.startswith("usage: ebt-forecast {") and "forecast" in usage and "benchmark" in usage


WARN = """
import sys, warnings
from types import SimpleNamespace
from lightning.fabric.utilities.rank_zero import rank_zero_warn
from lightning.fabric.utilities.warnings import PossibleUserWarning
import ebt_forecast.cli as cli

def command(app):
    warnings.warn("the user's own warning")
    rank_zero_warn("Found 3 module(s) in eval mode at the start of training.", category=PossibleUserWarning)
    return 0

cli.task_of_command = lambda name: SimpleNamespace(commands={name: SimpleNamespace(run=command)})
sys.exit(cli.run(SimpleNamespace(command="noisy", runtime=SimpleNamespace(threads=1))))
"""


def test_run_shows_a_commands_user_warning_and_hides_lightnings_noise(tmp_path):
    """After `run` sets warnings up, a command's UserWarning reaches stderr; Lightning's known notes do not."""
    err = sh(sys.executable, "-c", WARN, cwd=tmp_path).stderr
    assert "UserWarning: the user's own warning" in err
    assert "eval mode" not in err


def test_a_missing_config_package_is_a_loud_error(monkeypatch):
    """No silent fallback to the bare schema: without ebt_forecast.configs, composing names the problem."""
    import ebt_forecast.config as config

    config.config_dir.cache_clear()
    monkeypatch.setattr(config, "CONFIG_PACKAGE", "ebt_forecast.no_such_configs")
    try:
        with pytest.raises(config.ConfigDirError, match="ebt_forecast.no_such_configs is not installed"):
            config.compose("benchmark", [])
    finally:
        config.config_dir.cache_clear()


def test_installed_wheel_carries_the_pretrained_models(installed):
    """The weights `forecast` serves by default ship inside the wheel, byte for byte."""
    for name in ("ebt_1m", "twin_1m"):
        for file in ("model.json", "weights.pt"):
            shipped = installed / "ebt_forecast" / "pretrained" / name / file
            assert shipped.is_file(), shipped
            assert shipped.read_bytes() == (REPO / "ebt_forecast" / "pretrained" / name / file).read_bytes()
