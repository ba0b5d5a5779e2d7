"""Control task: a world-model EBT whose energy (plus the task cost) is minimised over future actions."""
from ebt_forecast.tasks.base import Command, TaskSpec, register_task
from ebt_forecast.tasks.control.config import ControlAppConfig, ControlTaskConfig


def _control(app: ControlAppConfig) -> int:
    from ebt_forecast.tasks.control.run import run_control_command

    return run_control_command(app)


register_task(TaskSpec(
    name="control", config=ControlTaskConfig, app_config=ControlAppConfig,
    commands={"control": Command("plan with a world-model EBT (env=pendulum|mountain_car|thermal) against CEM / MPPI "
                                 "on a learned ensemble and on the true simulator; tables and plots", _control)}))
