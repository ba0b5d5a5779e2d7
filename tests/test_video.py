"""The video task: decoding, the frame autoencoder, no leakage through the doubled sequence, thinking, the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ebt_forecast.cli import main
from ebt_forecast.data.errors import DataError
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import TrainerConfig, fit_module
from ebt_forecast.tasks.video.autoencoder import AutoencoderModule
from ebt_forecast.tasks.video.config import VideoTaskConfig
from ebt_forecast.tasks.video.data import WeightedDraws, cut_clips, moving_digits, read_video
from ebt_forecast.tasks.video.model import TransformerPlusPlusVideo, VideoEBT
from ebt_forecast.tasks.video.module import VideoModule
from ebt_forecast.think import ThinkConfig

TINY = TransformerConfig(dim=32, depth=2, heads=2, ffn_multiplier=1.0)
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video"


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def write_video(path: Path, frames: int, height: int = 40, width: int = 56) -> Path:
    """A small mp4 (mpeg4) of a bright square moving right over a dark gradient."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            img = np.tile(np.linspace(0, 60, width, dtype=np.uint8), (height, 1))
            x = 2 + (2 * t) % (width - 16)
            img[10:22, x:x + 12] = 230
            frame = av.VideoFrame.from_ndarray(np.repeat(img[..., None], 3, axis=2), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_decoding_a_shared_clip_gives_its_documented_frames():
    import av

    path = SHARED / "carphone_pristine.mp4"
    with av.open(str(path)) as c:
        assert (c.streams.video[0].height, c.streams.video[0].width) == (144, 176)  # data_cards/video_clips.md
    frames = read_video(path, 32)
    assert frames.shape == (120, 1, 32, 32) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0 and frames.std() > 0.05
    assert np.abs(frames[1:] - frames[:-1]).mean() < np.abs(frames[60:] - frames[:-60]).mean()  # nearby frames agree


def test_autoencoder_reconstructs_a_held_out_frame_better_than_the_mean_frame():
    kw = dict(canvas=16, digit_size=8, digits=1)
    train = torch.from_numpy(moving_digits(200, 4, seed=1, **kw).reshape(-1, 1, 16, 16))
    test = torch.from_numpy(moving_digits(8, 4, split="test", seed=2, **kw).reshape(-1, 1, 16, 16))
    module = AutoencoderModule(16, 16, 8, 5e-3)
    fit_module(module, WeightedDraws([train], [1.0], 100 * 32, 0, key="frame"),
               TrainerConfig(max_steps=100, batch_size=32, progress_bar=False), seed=0)
    ae = module.model
    ae.fit_standardisation(train)
    with torch.no_grad():
        z = ae.encode(test)
        reconstruction = ae.decode(z)
        assert z.shape == (32, 16) and abs(float(ae.encode(train).mean())) < 0.1  # standardised latents
    mse = float(((reconstruction - test) ** 2).mean())
    mean_frame = float(((train.mean(0) - test) ** 2).mean())
    assert mse < 0.6 * mean_frame


def test_no_candidate_sees_a_later_frame_or_another_candidate():
    torch.manual_seed(0)
    model = VideoEBT(TINY, 6, 7).double()
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    candidates = torch.randn(2, 7, 6, dtype=torch.float64, requires_grad=True)

    def energies_and_grad(frames, z):
        e = model.token_energies(model.encode(frames).cache, z)
        (g,) = torch.autograd.grad(e.sum(), z)
        return e.detach(), g

    e, g = energies_and_grad(x, candidates)
    assert torch.allclose(e, model.doubled_energies(x, candidates).detach(), atol=1e-10)  # cache == doubled sequence
    j = 4
    later = x.clone()
    later[:, j:] += torch.randn(2, 7 - j, 6, dtype=torch.float64)  # change frames j, j+1, ...
    e2, g2 = energies_and_grad(later, candidates)
    assert torch.allclose(e[:, :j], e2[:, :j]) and torch.allclose(g[:, :j], g2[:, :j])  # frame i+1's candidate: 0..i
    assert not torch.allclose(e[:, j:], e2[:, j:])
    bumped = candidates.detach().clone()
    bumped[:, j] += 1.0
    e3, g3 = energies_and_grad(x, bumped.requires_grad_(True))
    others = [i for i in range(7) if i != j]
    assert torch.allclose(e[:, others], e3[:, others]) and torch.allclose(g[:, others], g3[:, others])
    twin = TransformerPlusPlusVideo(TINY, 6, 7).double()
    with torch.no_grad():
        assert torch.allclose(twin(x)[:, :j], twin(later)[:, :j], atol=1e-10)
        assert not torch.allclose(twin(x)[:, j:], twin(later)[:, j:])


def test_thinking_lowers_the_energy_and_the_error_of_a_tiny_trained_ebt():
    g = torch.Generator().manual_seed(0)
    start, velocity = torch.randn(512, 1, 4, generator=g), 0.3 * torch.randn(512, 1, 4, generator=g)
    clips = start + velocity * torch.arange(6.0).view(1, 6, 1)  # latents moving in straight lines
    trainer = TrainerConfig(max_steps=60, batch_size=32, lr=3e-3, warmup_steps=10, progress_bar=False)
    think = ThinkConfig(train_steps=2, infer_steps=2, alpha=1.0, learn_alpha=True, alpha_lr_multiplier=10.0,
                        truncate=False, num_candidates=1)
    torch.manual_seed(0)
    module = VideoModule(TransformerConfig(dim=16, depth=1, heads=2, ffn_multiplier=1.0), think, trainer,
                         VideoTaskConfig(), 4, 6)
    fit_module(module, WeightedDraws([clips[:448]], [1.0], 60 * 32, 0), trainer, seed=None)
    thought = module.infer({"x": clips[448:]}, num_candidates=1, group=1, steps=4, selection="refined",
                           generator=torch.Generator().manual_seed(1))
    energies = thought.path_energies[:, :, 0].mean(0)  # (steps + 1,) on held-out clips
    assert (energies[1:] < energies[:-1]).all()
    error = ((thought.path[:, :, 0] - clips[448:, 1:].unsqueeze(1)) ** 2).mean((0, 2, 3))
    assert error[2] < 0.8 * error[0] and error[4] < error[2]  # from noise towards the next latent
    # (three seeds of this setting: error after 2 steps / at the noise start = 0.63, 0.70, 0.75)


def test_starts_come_from_noise_or_from_the_last_frame():
    x = torch.randn(3, 6, 4)
    think = ThinkConfig(num_candidates=1)
    for init in ("noise", "last"):
        module = VideoModule(TINY, think, TrainerConfig(), VideoTaskConfig(init=init, init_std=0.5), 4, 6)
        starts = module.propose(module.encode({"x": x}), {"x": x}, 2, 3, torch.Generator().manual_seed(0))
        assert starts.starts.shape == (3, 2, 3, 5, 4) and starts.energy_fn(starts.starts.flatten(0, 2), None).shape == (18,)
        spread = (starts.starts - x[:, None, None, :-1]).std()
        if init == "last":  # each clip's first start is the last observed frame's latent (copy-last), the rest near it
            assert torch.equal(starts.starts[:, 0, 0], x[:, :-1]) and torch.equal(starts.proposals[:, 0], x[:, :-1])
            assert 0.3 < float(spread) < 0.6
        else:
            assert 0.3 < float(starts.starts.std()) < 0.7 and float(spread) > 1.0


TINY_RUN = ["runtime.threads=1", "model.dim=32", "model.depth=1", "model.heads=2", "trainer.max_steps=4",
            "trainer.batch_size=4", "trainer.progress_bar=false", "trainer.checkpoint_every=2", "video.train_clips=24",
            "video.eval_clips=4", "video.ae_steps=4", "video.ae_batch=8", "video.clip_length=5",
            "video.think_steps=[0,1,2]", "video.frame_size=16", "video.digit_size=6", "video.candidate_counts=[1,2]", "video.strip_clips=1"]


def test_video_cli_writes_the_tables_reuses_its_cells_and_resumes_training(tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", 40)
    write_video(folder / "b.mp4", 12)
    out = tmp_path / "out"
    args = ["video", f"runtime.output_dir={out}", f"trainer.checkpoint_dir={tmp_path / 'ckpt'}",
            f"video.clips={folder}", "video.heldout=[b.mp4]", *TINY_RUN]
    assert main(args) == 0
    table = pd.read_csv(out / "video.csv")
    assert set(table["set"]) == {"digits", "digits_more", "digits_fast", "clips", "clips_heldout"}
    assert set(table["model"]) == {"ebt", "transformer_pp", "copy_last", "autoencoder"}
    ebt = table[table["model"] == "ebt"]
    assert set(ebt[ebt["kind"] == "steps"]["steps"]) == {0, 1, 2} and set(ebt[ebt["kind"] == "verify"]["candidates"]) == {1, 2}
    assert np.isfinite(ebt[(ebt["kind"] == "verify") & (ebt["candidates"] == 2)]["spearman"]).all()
    assert np.isfinite(table["latent_mse"]).all() and np.isfinite(table["psnr"]).all()
    for name in ("video.md", "strip.png", "plots/latent_mse_vs_steps.png", "plots/latent_mse_vs_candidates.png"):
        assert (out / name).exists()
    models = sorted((out / "models").glob("*.pt"))
    stamps = [p.stat().st_mtime_ns for p in models]
    capsys.readouterr()
    assert main(args) == 0  # every model and cell is reused
    printed = capsys.readouterr().out
    assert "training ebt" not in printed and "training the frame autoencoder" not in printed
    assert pd.read_csv(out / "video.csv").equals(table)
    assert [p.stat().st_mtime_ns for p in models] == stamps
    # an interrupted run: the EBT's file is gone but its Lightning checkpoint is there; training resumes from it
    ebt_file = next(p for p in models if p.name.startswith("ebt_"))
    weights = torch.load(ebt_file, weights_only=True)
    ebt_file.unlink()
    for cells in (out / "cells").iterdir():
        for f in cells.glob("ebt_*.json"):
            f.unlink()
    assert main(args) == 0
    resumed = torch.load(ebt_file, weights_only=True)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    assert pd.read_csv(out / "video.csv").equals(table)


@pytest.mark.parametrize("override, message", [
    ("video.clips=EMPTY", "holds no video"),
    ("video.clips=/no/such/folder", "/no/such/folder"),
    ("video.clips=BROKEN", "cannot decode video"),
    ("video.clips=SHORT video.clip_length=16", "a clip of 16 frames is longer than"),
    ("video.clips=SHORT video.heldout=[nope.mp4]", "'nope.mp4'"),
    ("video.sources=[webcam]", "video.sources"),
    ("task.init=zeros", "task.init='zeros' is invalid"),
    ("video.nonsense=1", "nonsense"),
])
def test_video_cli_rejects_bad_input(tmp_path, capsys, override, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.mp4").write_bytes(b"not a video at all" * 10)
    (tmp_path / "short").mkdir()
    write_video(tmp_path / "short" / "a.mp4", 12)
    out = tmp_path / "out"
    args = [a.replace("EMPTY", str(tmp_path / "empty")).replace("BROKEN", str(tmp_path / "broken"))
            .replace("SHORT", str(tmp_path / "short")) for a in override.split()]
    settings = {a.split("=")[0]: a for a in ["video.sources=[clips]", "video.heldout=[]", *TINY_RUN, *args]}
    assert main(["video", f"runtime.output_dir={out}", *settings.values()]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing written


def test_clips_never_cross_the_end_of_a_video():
    frames = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    clips = cut_clips(frames, 4, 1)
    assert clips.shape == (7, 4, 1, 1, 1) and float(clips[-1, -1, 0, 0, 0]) == 9.0
    with pytest.raises(DataError, match="longer than its 10 frames"):
        cut_clips(frames, 11, 1)
