"""Image task: a bidirectional EBT that denoises by minimising energy over the clean image, against a DiT twin."""
from ebt_forecast.tasks.base import Command, TaskSpec, register_task
from ebt_forecast.tasks.image.config import ImageAppConfig, ImageTaskConfig


def _image(app: ImageAppConfig) -> int:
    from ebt_forecast.tasks.image.run import run_image_command

    return run_image_command(app)


register_task(TaskSpec(
    name="image", config=ImageTaskConfig, app_config=ImageAppConfig,
    commands={"image": Command("denoise photo crops with a bidirectional EBT (thinking steps) against a DiT (DDIM "
                               "steps) at seen and unseen noise levels (image.photos=FOLDER, default bundled photos); "
                               "PSNR / MSE against forward passes, tables and plots", _image)}))
