"""`ebt-forecast <command> key=value ...`: commands registered by tasks, Hydra-composed, clean errors (exit 2).

`ebt-forecast <command> -m key=a,b ...` is a Hydra multirun: one job per combination of the swept values,
run by Hydra's launcher (the basic one in turn; `hydra/launcher=joblib` in parallel processes;
`hydra/launcher=submitit_slurm` as SLURM jobs where hydra-submitit-launcher is installed). Each job writes
under `<runtime.output_dir>/<its overrides>/` (e.g. `results/benchmark/seed=1/`), a folder named by the
swept values alone, so the same sweep run again finds each job's finished cells and resumes.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

# gluonts suggests optional JSON speed-ups on import; not actionable for a CLI user
warnings.filterwarnings("ignore", message=".*json.*-module for json-handling")

from ebt_forecast.config import commands, compose, config_dir, register_configs  # noqa: E402
from ebt_forecast.errors import ConfigError, EBTForecastError, UsageError  # noqa: E402
from ebt_forecast.tasks.base import AppConfig, task_of_command  # noqa: E402


def usage() -> str:
    """The command list, from the registered tasks."""
    table = commands()
    return f"usage: ebt-forecast {{{','.join(table)}}} [-m] [key=value ...]\n" + "\n".join(
        f"  {name:<10} {text}" for name, text in table.items())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, overrides = argv[0], argv[1:]
    sweep = [a for a in overrides if a in MULTIRUN_FLAGS]
    overrides = [a for a in overrides if a not in MULTIRUN_FLAGS]
    try:
        if command not in commands():
            raise UsageError(f"unknown command {command!r}\n{usage()}")
        if sweep:
            return multirun(command, overrides)
        return run(compose(command, overrides))
    except EBTForecastError as err:
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
    """Set the process up (threads, quiet logs, known-noisy warnings off) and run the command's function."""
    import torch

    if app.runtime.threads < 1:
        raise ConfigError(f"runtime.threads={app.runtime.threads} is invalid: must be >= 1")
    torch.set_num_threads(app.runtime.threads)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    quiet_known_warnings()
    command = task_of_command(app.command).commands[app.command].run
    rank = other_rank()
    return command(app) if rank is None else run_as_other_rank(app, command, rank)


def quiet_known_warnings() -> None:
    """Hide the warnings known to be noise for a CLI user; every other UserWarning still shows."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    # Lightning's own "may be fine" category: modules in eval mode at fit start, few dataloader workers,
    # GPU available but not used, fewer batches than the logging interval
    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def other_rank() -> str | None:
    """None in the process that owns the results; a label like `node0-local1` in a process that a launcher
    started to run the same command line for data-parallel training (Lightning's `trainer.strategy=ddp`,
    torchrun, SLURM's srun), which must train beside rank 0 but write nothing of its own."""
    env = os.environ
    if "RANK" in env:  # torchrun
        return None if int(env["RANK"]) == 0 else f"rank{env['RANK']}"
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return None if int(env["SLURM_PROCID"]) == 0 else f"rank{env['SLURM_PROCID']}"
    node, local = int(env.get("NODE_RANK", "0") or 0), int(env.get("LOCAL_RANK", "0") or 0)
    return None if node == local == 0 else f"node{node}-local{local}"


def run_as_other_rank(app: AppConfig, command, rank: str) -> int:
    """Run the command as a rank other than 0: it reads a private copy of the output folder as it is when
    the rank starts (so it finds the cells and caches rank 0 finds, and trains exactly when rank 0 trains),
    writes there, and the copy is deleted at the end: only rank 0's files and printout remain."""
    private = Path(tempfile.mkdtemp(prefix=f"ebt-forecast-{rank}-"))
    source, copy = Path(app.runtime.output_dir), private / "output"
    if source.is_dir():
        shutil.copytree(source, copy)
    app.runtime.output_dir = str(copy)
    stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
    try:
        return command(app)
    finally:
        sys.stdout.close()
        sys.stdout = stdout
        shutil.rmtree(private, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# multirun: Hydra's sweeper and launcher, one folder per job

MULTIRUN_FLAGS = ("-m", "--multirun")
NOT_IN_FOLDER_NAME = ("command", "task")  # the same for every job; so are the keys given one value


def sweep_settings(overrides: list[str]) -> list[str]:
    """Hydra settings of a resumable sweep (each kept unless the command line sets it): jobs write under
    runtime.output_dir, each in a folder named by its swept values (`seed=1`), not by the date or its number."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("hydra")])
    fixed = {o.key_or_group for o in parsed if not o.is_sweep_override()}
    defaults = {
        "hydra.sweep.dir": "${runtime.output_dir}",
        "hydra.sweep.subdir": "${hydra.job.override_dirname}",
        "hydra.job.config.override_dirname.exclude_keys": f"[{','.join(sorted({*NOT_IN_FOLDER_NAME, *fixed}))}]",
    }
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [f"{key}={value}" for key, value in defaults.items() if key not in given]


def multirun(command: str, overrides: list[str]) -> int:
    """Run the command once per combination of swept values (Hydra multirun); the worst exit code of the jobs."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ebt_forecast.tasks import discover_tasks

    discover_tasks()
    spec = task_of_command(command)
    register_configs(spec)
    GlobalHydra.instance().clear()
    first = [f"command={command}", f"task={spec.name}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="ebt-forecast"):
        batches = GlobalHydra.instance().hydra.multirun(
            config_name="config", task_function=run_job, overrides=[*first, *sweep_settings(overrides), *overrides])
    jobs = [job for batch in batches for job in batch]
    codes = [job.return_value for job in jobs]  # a job's unexpected exception is raised here
    for job, code in zip(jobs, codes):
        print(f"job {job.hydra_cfg.hydra.job.num} ({job.hydra_cfg.hydra.job.override_dirname or 'nothing swept'}): "
              f"exit code {code}, output in {job.hydra_cfg.hydra.runtime.output_dir}")
    return max(codes, default=0)


def run_job(cfg) -> int:
    """One job of a multirun, in whichever process the launcher gave it: its config, written under its folder."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from ebt_forecast.tasks import discover_tasks

    discover_tasks()  # a launcher's worker process starts with no task registered
    app = OmegaConf.to_object(cfg)
    app.runtime.output_dir = HydraConfig.get().runtime.output_dir
    try:
        if app.trainer.strategy in ("ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true"):
            raise ConfigError(f"trainer.strategy={app.trainer.strategy!r} relaunches the command line in each "
                              "process, which a multirun job cannot do: use trainer.strategy=ddp_spawn in a sweep")
        return run(app)
    except EBTForecastError as err:
        print(f"ebt-forecast {app.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
