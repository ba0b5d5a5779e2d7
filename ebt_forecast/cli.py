"""`ebt-forecast <command> key=value ...`: commands registered by tasks, Hydra-composed, clean errors (exit 2)."""
from __future__ import annotations

import logging
import sys
import warnings

# gluonts suggests optional JSON speed-ups on import; not actionable for a CLI user
warnings.filterwarnings("ignore", message=".*json.*-module for json-handling")

from ebt_forecast.config import commands, compose  # noqa: E402
from ebt_forecast.data.errors import DataError  # noqa: E402
from ebt_forecast.tasks.base import AppConfig, task_of_command  # noqa: E402
from ebt_forecast.think import ConfigError  # noqa: E402


class UsageError(ValueError):
    """A bad command line."""


def usage() -> str:
    """The command list, from the registered tasks."""
    table = commands()
    return f"usage: ebt-forecast {{{','.join(table)}}} [key=value ...]\n" + "\n".join(
        f"  {name:<10} {text}" for name, text in table.items())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, overrides = argv[0], argv[1:]
    try:
        if command not in commands():
            raise UsageError(f"unknown command {command!r}\n{usage()}")
        return run(compose(command, overrides))
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
    """Set the process up (threads, quiet logs) and run the command's function."""
    import torch

    if app.runtime.threads < 1:
        raise ConfigError(f"runtime.threads={app.runtime.threads} is invalid: must be >= 1")
    torch.set_num_threads(app.runtime.threads)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return task_of_command(app.command).commands[app.command].run(app)


if __name__ == "__main__":
    sys.exit(main())
