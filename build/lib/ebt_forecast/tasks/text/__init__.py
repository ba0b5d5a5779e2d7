"""Text task: the EBT language model (System 1 / System 2 thinking over next-token logits) against a Transformer++."""
from ebt_forecast.tasks.base import Command, TaskSpec, register_task
from ebt_forecast.tasks.text.config import TextAppConfig, TextTaskConfig


def _text(app: TextAppConfig) -> int:
    from ebt_forecast.tasks.text.run import run_text_command

    return run_text_command(app)


register_task(TaskSpec(
    name="text", config=TextTaskConfig, app_config=TextAppConfig,
    commands={"text": Command("train an EBT language model and its Transformer++ twin (text.corpus=PATH, default "
                              "Shakespeare); perplexity against thinking steps and candidates, OOD sets; tables and plots",
                              _text)}))
