"""The video task: decoding, the frame autoencoder, no leakage through the doubled sequence, thinking, the CLI."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ebt_forecast.cli import main
from ebt_forecast.errors import DataError
from ebt_forecast.experiment import Artifacts
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import TrainerConfig, fit_module
from ebt_forecast.tasks.video.autoencoder import AutoencoderModule, FrameAutoencoder
from ebt_forecast.tasks.video.config import VideoAppConfig, VideoRunConfig, VideoTaskConfig
from ebt_forecast.tasks.video.data import VideoSets, WeightedDraws, cut_clips, load_sets, moving_digits, read_video
from ebt_forecast.tasks.video.model import TransformerPlusPlusVideo, VideoEBT
from ebt_forecast.tasks.video.module import TransformerPPVideoModule, VideoModule
from ebt_forecast.tasks.video.run import Trained, evaluate_rollouts, load_or_train_autoencoder
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
                           generator=torch.Generator().manual_seed(1), final_energy=True)
    energies = thought.path_energies[:, :, 0].mean(0)  # (steps + 1,) on held-out clips
    assert (energies[1:] < energies[:-1]).all()
    error = ((thought.path[:, :, 0] - clips[448:, 1:].unsqueeze(1)) ** 2).mean((0, 2, 3))
    assert error[2] < 0.8 * error[0] and error[4] < error[2]  # from noise towards the next latent
    # (three seeds of this setting: error after 2 steps / at the noise start = 0.63, 0.70, 0.75)


def test_the_step_embedding_reaches_the_video_energy():
    """think.step_embedding: each thinking step scores the candidates in its own landscape, through the cached
    energy, the module's per-frame energies and the engine's steps."""
    torch.manual_seed(0)
    think = ThinkConfig(train_steps=2, infer_steps=2, alpha=0.5, learn_alpha=False, step_embedding=True,
                        detach_steps=True, truncate=False, num_candidates=1)
    module = VideoModule(TINY, think, TrainerConfig(), VideoTaskConfig(), 4, 6).double().eval()
    assert module.model.step_embed.num_embeddings == 2
    assert VideoModule(TINY, ThinkConfig(), TrainerConfig(), VideoTaskConfig(), 4, 6).model.step_embed is None
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    z = torch.randn(2, 5, 4, dtype=torch.float64)
    encoding = module.encode({"x": x})
    with torch.no_grad():
        module.model.step_embed.weight.normal_()  # trained landscapes differ; the init is small but not equal
        first, second, beyond = (module.model.token_energies(encoding.cache, z, step=t) for t in (0, 1, 7))
        assert not torch.allclose(first, second)
        torch.testing.assert_close(beyond, second)  # past the trained steps: the last landscape
        torch.testing.assert_close(module.model.doubled_energies(x[:, :-1], z, step=1), second)  # cache == doubled
        torch.testing.assert_close(module.frame_energies(encoding, z[:, None], 0)[:, 0], first)  # a start: step 0's
        torch.testing.assert_close(module.frame_energies(encoding, z[:, None], 4)[:, 0], second)  # after 4: the last
    # the engine's two steps descend step 0's landscape, then step 1's
    result = module.think(module.energy_fn(encoding, 1), z[:, None], training=False, steps=2, final_energy=False)
    state = z
    for t in range(2):
        state = state.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(module.model.energy(encoding.cache, state, step=t).sum(), state)
        state = (state - 0.5 * g).detach()
    torch.testing.assert_close(result.candidates[:, 0], state)


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


def test_rollouts_feed_each_model_its_own_predictions():
    torch.manual_seed(0)
    s, d = 4, 6  # 4 true context frames (clip_length 5), then up to 4 predicted
    z = torch.randn(6, s + 4, d)
    clips = np.random.default_rng(0).random((6, s + 4, 1, 16, 16), dtype=np.float32)
    app = VideoAppConfig(video=VideoRunConfig(clip_length=s + 1, rollout_steps=[1, 2, 4], eval_batch=4))
    ae = FrameAutoencoder(16, d, 4).eval()
    mse = lambda a, b: float(((a - b) ** 2).mean())  # noqa: E731
    by_k = lambda rows, model: {r["k"]: r["latent_mse"] for r in rows if r["model"] == model}  # noqa: E731
    baselines = evaluate_rollouts(None, ae, "set", z, clips, app)
    assert by_k(baselines, "copy_last") == pytest.approx({k: mse(z[:, s - 1 + k], z[:, s - 1]) for k in (1, 2, 4)})
    assert by_k(baselines, "autoencoder") == {1: 0.0, 2: 0.0, 4: 0.0}
    twin = TransformerPPVideoModule(TINY, TrainerConfig(), d, s + 1).eval()
    ebt = VideoModule(TINY, app.think, TrainerConfig(), VideoTaskConfig(init="last", init_std=0.0), d, s + 1).eval()
    for kind, module in [("transformer_pp", twin), ("ebt", ebt)]:  # the EBT starts at the last frame: deterministic
        def next_frame(frames, module=module):  # the default prediction after frames 0..s-1 (teacher-forced, one step)
            if module is twin:  # its forward
                return module.model(frames)[:, -1].detach()
            x = torch.cat([frames, frames[:, -1:]], 1)
            return module.infer({"x": x}, num_candidates=1, group=1, steps=app.think.infer_steps,
                                selection="refined").samples[:, 0, -1].detach()

        rows = by_k(evaluate_rollouts(Trained(kind, module, "key", {}), ae, "set", z, clips, app), kind)
        first = next_frame(z[:, :s])
        assert rows[1] == pytest.approx(mse(first, z[:, s]), rel=1e-4)  # k = 1: the one-step prediction
        second = next_frame(torch.cat([z[:, 1:s], first[:, None]], 1))  # reads its own frame s, not the true one
        assert rows[2] == pytest.approx(mse(second, z[:, s + 1]), rel=1e-4)
        assert abs(rows[2] - mse(next_frame(z[:, 1:s + 1]), z[:, s + 1])) > 1e-3  # != teacher-forced
    window = z[:, :s]  # the twin's 4-step rollout by hand
    with torch.no_grad():
        for _ in range(4):
            window = torch.cat([window[:, 1:], twin.model(window)[:, -1:]], 1)
    rows = by_k(evaluate_rollouts(Trained("transformer_pp", twin, "", {}), ae, "set", z, clips, app), "transformer_pp")
    assert rows[4] == pytest.approx(mse(window[:, -1], z[:, s + 3]), rel=1e-4)
    # the digits' rollout clips extend the evaluation clips (the same draws, longer)
    sets = load_sets(VideoRunConfig(sources=["digits"], frame_size=16, digit_size=6, clip_length=5, train_clips=2,
                                    eval_clips=3, rollout_steps=[1, 8]), seed=0)
    assert sets.rollout["digits_fast"].shape == (3, 12, 1, 16, 16)
    assert all(np.array_equal(sets.rollout[n][:, :5], sets.evaluation[n]) for n in sets.evaluation)


@pytest.mark.parametrize("accelerator, precision", [
    ("auto", "64-true"),
    pytest.param("gpu", "bf16-mixed", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
])
def test_the_autoencoder_trains_where_and_how_the_trainer_says(tmp_path, monkeypatch, accelerator, precision):
    import lightning as L

    built = []

    class Spy(L.Trainer):
        def __init__(self, **kwargs):
            built.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(L, "Trainer", Spy)
    sets = VideoSets({"digits": moving_digits(4, 3, canvas=16, digit_size=6)}, {}, [], "tiny", "key")
    video = VideoRunConfig(frame_size=16, latent_dim=4, ae_width=4, ae_steps=2, ae_batch=4, digit_size=6)
    app = VideoAppConfig(trainer=TrainerConfig(accelerator=accelerator, precision=precision, progress_bar=False),
                         video=video)
    ae, key, _ = load_or_train_autoencoder(app, sets, Artifacts(tmp_path))
    assert [(b["accelerator"], b["precision"], b["strategy"], b["devices"]) for b in built] == [
        (accelerator, precision, "auto", 1)]
    assert all(t.dtype == torch.float32 for t in ae.state_dict().values())  # float32 whatever the precision
    assert ae.encode(torch.rand(2, 1, 16, 16)).dtype == torch.float32
    _, key32, _ = load_or_train_autoencoder(dataclasses.replace(app, trainer=TrainerConfig(progress_bar=False)), sets,
                                            Artifacts(tmp_path))
    assert key32 != key and built[-1]["precision"] == "32-true"  # another precision, another model


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
    assert set(ebt["kind"]) == {"steps", "steps_scaled", "verify", "average", "oracle"}
    assert set(ebt[ebt["kind"] == "steps_scaled"]["steps"]) == {1}  # every budget but the trained 2 steps
    assert np.isfinite(ebt[(ebt["kind"] == "verify") & (ebt["candidates"] == 2)]["spearman"]).all()
    assert np.isfinite(table["latent_mse"]).all() and np.isfinite(table["psnr"]).all()
    for name in ("video.md", "strip.png", "plots/latent_mse_vs_steps.png", "plots/latent_mse_vs_candidates.png",
                 "plots/latent_mse_vs_rollout.png"):
        assert (out / name).exists()
    rollouts = pd.read_csv(out / "video_rollout.csv")  # a.mp4's 6 test frames are too few for 4 + 8 frame clips
    assert set(rollouts["set"]) == {"digits", "digits_more", "digits_fast", "clips_heldout"}
    assert set(rollouts["k"]) == {1, 2, 4, 8} and np.isfinite(rollouts[["latent_mse", "psnr"]]).all().all()
    assert len(rollouts) == 4 * 4 * 4 and "Autoregressive rollouts" in (out / "video.md").read_text()
    models = sorted((out / "models").glob("*/weights.pt"))
    assert len(models) == 3
    stamps = [p.stat().st_mtime_ns for p in models]
    capsys.readouterr()
    assert main(args) == 0  # every model and cell is reused
    printed = capsys.readouterr().out
    assert "training ebt" not in printed and "training the frame autoencoder" not in printed
    assert pd.read_csv(out / "video.csv").equals(table) and pd.read_csv(out / "video_rollout.csv").equals(rollouts)
    assert [p.stat().st_mtime_ns for p in models] == stamps
    # an interrupted run: the EBT's artifact is gone but its Lightning checkpoint is there; training resumes from it
    ebt_file = next(p for p in models if p.parent.name.startswith("ebt__"))
    weights = torch.load(ebt_file, weights_only=True)
    shutil.rmtree(ebt_file.parent)
    for f in (out / "cells").glob("ebt__*.json"):
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


def oracle_and_pick(rows: pd.DataFrame, n: int) -> tuple[float, float, float]:
    """Latent MSE of the best-of-N oracle, the lowest energy and the plain average of the same N candidates."""
    value = lambda kind: rows[(rows["kind"] == kind) & (rows["candidates"] == n)]["latent_mse"].item()  # noqa: E731
    return value("oracle"), value("verify"), value("average")


@pytest.mark.parametrize("recipe, train_steps", [("video_system1", 2), ("video_system2", 3)])
def test_the_reference_recipes_run_and_report_scaled_steps_the_average_and_the_oracle(tmp_path, recipe, train_steps):
    out = tmp_path / "out"
    run = [a for a in TINY_RUN if not a.startswith(("video.think_steps", "video.strip_clips"))]
    args = ["video", f"experiment={recipe}", f"runtime.output_dir={out}", "video.sources=[digits]",
            "video.models=[ebt]", "video.rollout_steps=[]", "video.strip_clips=0", "video.think_steps=[0,1,2,4]", *run]
    assert main(args) == 0
    table = pd.read_csv(out / "video.csv")
    ebt = table[table["model"] == "ebt"]
    assert set(ebt["set"]) == {"digits", "digits_more", "digits_fast"}  # in and out of distribution
    assert set(ebt["kind"]) == {"steps", "steps_scaled", "verify", "average", "oracle"}
    assert set(ebt[ebt["kind"] == "steps"]["steps"]) == {0, 1, 2, 4}  # more steps than trained
    assert set(ebt[ebt["kind"] == "steps_scaled"]["steps"]) == {1, 2, 4} - {train_steps}
    assert set(ebt[ebt["kind"] == "verify"]["steps"]) == {4}  # the reference's 4 inference steps
    for _, rows in ebt.groupby("set"):
        for n in (1, 2):
            oracle, verify, average = oracle_and_pick(rows, n)
            assert oracle <= verify + 1e-9  # (the average may beat both: it is no single candidate)
        assert len(set(oracle_and_pick(rows, 1))) == 1  # one candidate: nothing to choose or average
        pick = rows[(rows["kind"] == "verify") & (rows["candidates"] == 2)]["pick_best"].item()
        assert 0.0 <= pick <= 1.0
    report = (out / "video.md").read_text()
    assert f"alpha x {train_steps} / steps" in report and "best-of-N oracle" in report and "plain average" in report
    weights = torch.load(next((out / "models").glob("ebt__*/weights.pt")), weights_only=True)
    assert ("model.step_embed.weight" in weights) == (recipe == "video_system1")
    for f in (out / "cells").glob("ebt__*.json"):  # recomputed with inference noise: the same rows (seeded)
        f.unlink()
    assert main(args) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "video.csv"), table)
