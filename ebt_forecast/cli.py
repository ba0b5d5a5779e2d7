"""`ebt-forecast <command> key=value ...`: Hydra-composed commands with clean errors (exit code 2)."""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from omegaconf import OmegaConf

# gluonts suggests optional JSON speed-ups on import; not actionable for a CLI user
warnings.filterwarnings("ignore", message=".*json.*-module for json-handling")

from ebt_forecast.config import AppConfig, register_configs  # noqa: E402
from ebt_forecast.data.errors import DataError  # noqa: E402
from ebt_forecast.think import ConfigError  # noqa: E402

COMMANDS = {
    "benchmark": "run the forecasting benchmark (suite=default|shared) and write tables and plots",
    "forecast": "fit on every series in input=PATH and forecast horizon=H steps: output=OUT.csv",
}
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
USAGE = "usage: ebt-forecast {benchmark,forecast} [key=value ...]\n" + "\n".join(
    f"  {name:<10} {text}" for name, text in COMMANDS.items())


class UsageError(ValueError):
    """A bad command line."""


def compose(command: str, overrides: list[str]) -> AppConfig:
    """Compose configs/ (or the built-in schema when configs/ is absent) with overrides; type-check it."""
    from hydra import compose as hydra_compose
    from hydra import initialize, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    overrides = [f"command={command}", *overrides]
    if (CONFIG_DIR / "config.yaml").exists():
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides)
    else:
        with initialize(config_path=None, version_base="1.3"):
            cfg = hydra_compose("base_config", overrides=overrides)
    return OmegaConf.to_object(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, overrides = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            raise UsageError(f"unknown command {command!r}\n{USAGE}")
        app = compose(command, overrides)
        return run(app)
    except (UsageError, ConfigError, DataError) as err:
        print(f"ebt-forecast {command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # Hydra / OmegaConf composition and type errors name the key
        if _is_config_error(err):
            print(f"ebt-forecast {command}: config error: {_first_line(err)}", file=sys.stderr)
            return 2
        raise


def _is_config_error(err: Exception) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(err, (HydraException, OmegaConfBaseException))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        text = f"{text.splitlines()[0]}: {str(cause).strip().splitlines()[0]}"
    return text.splitlines()[0] if text else type(err).__name__


def run(app: AppConfig) -> int:
    """Dispatch a composed config to its command."""
    import torch

    if app.runtime.threads < 1:
        raise ConfigError(f"runtime.threads={app.runtime.threads} is invalid: must be >= 1")
    torch.set_num_threads(app.runtime.threads)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    app.forecaster()  # fail at start on invalid model / think / trainer / task values
    if app.command == "benchmark":
        from ebt_forecast.benchmark import run_benchmark

        out = run_benchmark(app)
        print((out / "results.md").read_text())
        print(f"results: {out}/results.csv, {out}/results.md, plots in {out}/plots")
        return 0
    from ebt_forecast.tasks.forecast.cli_forecast import run_forecast

    out = run_forecast(app)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
