"""Video task: next-frame prediction over learned frame latents, the EBT (System 1 / System 2 thinking) against a
Transformer++."""
from ebt_forecast.tasks.base import Command, TaskSpec, register_task
from ebt_forecast.tasks.video.config import VideoAppConfig, VideoTaskConfig


def _video(app: VideoAppConfig) -> int:
    from ebt_forecast.tasks.video.run import run_video_command

    return run_video_command(app)


register_task(TaskSpec(
    name="video", config=VideoTaskConfig, app_config=VideoAppConfig,
    commands={"video": Command("train a frame autoencoder, a next-frame EBT and its Transformer++ twin (video.clips="
                               "FOLDER, moving digits); latent MSE / PSNR against thinking steps and candidates, OOD "
                               "sets; tables, plots and a frame strip", _video)}))
