"""The image task: the denoising EBT's energy and thinking, the DiT's DDIM from the matching time, PSNR, the CLI."""
from __future__ import annotations

import dataclasses
import math

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from ebt_forecast.cli import main
from ebt_forecast.errors import ConfigError
from ebt_forecast.metrics import psnr
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import TrainerConfig, fit_module
from ebt_forecast.tasks.image.config import ImageRunConfig, ImageTaskConfig, image_think
from ebt_forecast.tasks.image.data import (
    TrainCrops,
    add_noise,
    as_gaussian,
    eval_crops,
    load_photos,
    q_sample_coefficients,
    split_photos,
)
from ebt_forecast.tasks.image.model import ImageEBT, ImageShape, alpha_bar, patchify, time_of_sigma, unpatchify
from ebt_forecast.tasks.image.module import DiTModule, ImageEBTModule
from ebt_forecast.tasks.image.run import dit_rows, ebt_rows, headline, thinking_rows, validation_steps

TINY = TransformerConfig(dim=32, depth=2, heads=2, ffn_multiplier=2.0)
SHAPE = ImageShape(channels=3, size=8, patch=4)
SIGMAS = [0.2, 0.3]


@pytest.fixture(scope="module")
def photo_data():
    """Training and held-out 8 x 8 crops of the bundled photos (downscaled 8x: crops carry edges, not flat sky)."""
    photos = load_photos(None, downscale=8, crop=8)
    splits = split_photos(list(photos), 6)
    train = [photos[n] for n in splits["train"]]
    held_out = eval_crops([photos[n] for n in splits["val"]], 8, 64, seed=1)
    return train, held_out


def _fit(module, train, steps: int, lr: float):
    trainer = TrainerConfig(max_steps=steps, batch_size=32, lr=lr, warmup_steps=10, progress_bar=False)
    fit_module(module, TrainCrops(train, 8, SIGMAS, steps * 32, seed=0), trainer, seed=None)
    return module.eval()


@pytest.fixture(scope="module")
def trained_ebt(photo_data):
    L.seed_everything(0, verbose=False)
    think = dataclasses.replace(image_think(), alpha=10.0)
    module = ImageEBTModule(TINY, think, TrainerConfig(lr=3e-3), ImageTaskConfig(), SHAPE)
    return _fit(module, photo_data[0], steps=100, lr=3e-3)


@pytest.fixture(scope="module")
def trained_dit(photo_data):
    L.seed_everything(0, verbose=False)
    return _fit(DiTModule(TINY, TrainerConfig(lr=3e-3), SHAPE), photo_data[0], steps=200, lr=3e-3)


def test_patchify_round_trip():
    x = torch.randn(2, 3, 8, 8)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 4, 48)
    assert torch.equal(tokens[0, 1], x[0, :, 0:4, 4:8].reshape(-1))  # patch 1 = top row, second column
    assert torch.equal(unpatchify(tokens, SHAPE), x)


def test_cached_energy_equals_joint_pass_and_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = ImageEBT(TransformerConfig(dim=16, depth=1, heads=2), SHAPE).double()
    noisy = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    cache = model.encode(noisy).cache
    energy = model.energy(cache, x)
    assert torch.allclose(energy, model.joint_energy(noisy, x), atol=1e-10)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    direction = torch.randn_like(x)
    h = 1e-6
    with torch.no_grad():
        numeric = (model.energy(cache, x + h * direction) - model.energy(cache, x - h * direction)).sum() / (2 * h)
    assert float(numeric) == pytest.approx(float((grad * direction).sum()), rel=1e-5, abs=1e-9)


def test_the_unconditional_energy_ignores_the_noisy_image_and_the_conditional_one_reads_it():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    y1, y2 = torch.randn(2, 3, 3, 8, 8, dtype=torch.float64)
    for conditional in (True, False):
        model = ImageEBT(TransformerConfig(dim=16, depth=1, heads=2), SHAPE, conditional=conditional).double()
        e1, e2 = (model.energy(model.encode(y).cache, x) for y in (y1, y2))
        assert torch.allclose(e1, model.joint_energy(y1, x), atol=1e-10)
        if conditional:
            assert (e1 - e2).abs().min() > 1e-6  # every candidate's energy moves with its noisy image
        else:
            assert torch.equal(e1, e2)  # the same candidate, two different noisy images: the same energy
            assert torch.equal(model.joint_energy(y1, x), model.joint_energy(y2, x))
            assert not hasattr(model, "context_embed") and model.condition.requires_grad
    module = ImageEBTModule(TINY, image_think(), TrainerConfig(), ImageTaskConfig(conditioning="unconditional"),
                            SHAPE).eval()
    images = x.float()
    assert torch.equal(module.energy(y1.float(), images), module.energy(y2.float(), images))


def test_q_sample_noise_has_the_schedules_variance():
    # step 99 of the linear schedule of int(100 / level) steps, betas scaled by 1000 / steps (guided-diffusion)
    for level, betas in ((0.1, np.linspace(1e-4, 0.02, 1000)), (0.2, np.linspace(2e-4, 0.04, 500))):
        abar = float(np.prod(1 - betas[:100]))
        signal, noise = q_sample_coefficients(level)
        assert (signal, noise) == pytest.approx((abar ** 0.5, (1 - abar) ** 0.5), rel=1e-12)
    assert q_sample_coefficients(0.1) == pytest.approx((0.9471, 0.3209), abs=1e-4)  # "sigma 0.32, signal x 0.95"
    signal, noise = q_sample_coefficients(0.1)
    clean = torch.rand(64, 3, 32, 32) * 2 - 1  # 196,608 pixels
    noisy = add_noise(clean, 0.1, seed=5, kind="q_sample")
    residual = noisy - signal * clean  # = sqrt(1 - abar) eps
    assert float(residual.mean()) == pytest.approx(0.0, abs=0.005)
    assert float(residual.std()) == pytest.approx(noise, rel=0.01)
    slope = float(((noisy - noisy.mean()) * (clean - clean.mean())).mean() / clean.var())
    assert slope == pytest.approx(signal, rel=0.01)
    gaussian = add_noise(clean, 0.1, seed=5)  # the same (seed, level) draws the same eps for either corruption
    assert torch.allclose((gaussian - clean) / 0.1, residual / noise, atol=1e-4)
    gauss, sigma = as_gaussian(noisy, 0.1, "q_sample")  # the DiT's form: clean + sigma * eps
    assert sigma == pytest.approx(noise / signal) and float((gauss - clean).std()) == pytest.approx(sigma, rel=0.01)
    crops = TrainCrops([clean[0].numpy()], 8, [0.1], length=2000, seed=0, kind="q_sample")
    items = [crops[i] for i in range(len(crops))]
    eps = torch.stack([(d["noisy"] - signal * d["clean"]) / noise for d in items])
    assert float(eps.std()) == pytest.approx(1.0, rel=0.02)
    with pytest.raises(ConfigError, match=r"image.train_sigmas=\[1.5\].*\(0, 1\]"):
        ImageRunConfig(noise="q_sample", train_sigmas=[1.5]).validate()
    with pytest.raises(ConfigError, match="task.conditioning='noisy'.*conditional, unconditional"):
        ImageTaskConfig(conditioning="noisy").validate()


def test_thinking_rows_scale_alpha_and_verify_seeded_candidates():
    torch.manual_seed(0)
    clean = torch.rand(6, 3, 8, 8) * 2 - 1
    noisy = add_noise(clean, 0.2, seed=0, kind="q_sample")
    think = dataclasses.replace(image_think(), train_steps=1, train_steps_min=0, infer_steps=2)
    module = ImageEBTModule(TINY, think, TrainerConfig(), ImageTaskConfig(conditioning="unconditional"), SHAPE).eval()
    def timeless(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    rows = thinking_rows(module, noisy, clean, steps=3, counts=[1, 2, 4], noise_std=0.1, batch=4, seed=3)
    again = thinking_rows(module, noisy, clean, steps=3, counts=[1, 2, 4], noise_std=0.1, batch=4, seed=3)
    assert timeless(rows) == timeless(again)  # seeded inference noise
    scaled = {r["steps"]: r for r in rows if r["kind"] == "steps_scaled"}
    assert sorted(scaled) == [2, 3]  # past train_steps = 1 only
    plain = {r["steps"]: r for r in ebt_rows(module, noisy, clean, steps=3, batch=4, seed=3)}
    for k, row in scaled.items():  # each budget from the start: k forwards and k backwards per image
        assert (row["forward_passes"], row["backward_passes"]) == (k, k)
        assert row["mse"] != plain[k]["mse"]  # alpha x 1 / k is a different step
    by = {(r["kind"], r["candidates"]): r for r in rows if r["kind"] != "steps_scaled"}
    assert by[("verify", 1)]["mse"] == by[("average", 1)]["mse"] == by[("oracle", 1)]["mse"]
    for n in (1, 2, 4):
        assert by[("oracle", n)]["mse"] <= by[("verify", n)]["mse"] + 1e-12
        assert (by[("verify", n)]["forward_passes"], by[("verify", n)]["backward_passes"]) == (n * (2 + (n > 1)), 2 * n)
    assert by[("oracle", 4)]["mse"] <= by[("oracle", 2)]["mse"] <= by[("oracle", 1)]["mse"]  # nested candidate sets
    assert -1 <= by[("verify", 4)]["spearman"] <= 1 and 0 <= by[("verify", 4)]["pick_best"] <= 1
    quiet = {(r["kind"], r["candidates"]): r for r in thinking_rows(module, noisy, clean, steps=2, counts=[1, 4],
                                                                     noise_std=0.0, batch=4, seed=3)}
    assert quiet[("verify", 4)]["psnr"] == pytest.approx(quiet[("average", 4)]["psnr"], abs=1e-5)
    assert quiet[("verify", 4)]["psnr"] == pytest.approx(quiet[("oracle", 4)]["psnr"], abs=1e-5)
    assert math.isnan(quiet[("verify", 4)]["spearman"])  # no noise: N identical candidates, nothing to rank
    assert quiet[("verify", 1)]["mse"] == pytest.approx(plain[2]["mse"], abs=1e-7)  # = the plain 2-step row


def test_thinking_lowers_energy_and_error_on_a_trained_tiny_model(trained_ebt, photo_data):
    clean = photo_data[1]
    noisy = add_noise(clean, 0.2, seed=3)
    thought = trained_ebt.denoise(noisy, 2)
    path = [thought.path[:, t, 0] for t in range(3)]
    mse = [float((x - clean).pow(2).mean()) for x in path]
    assert float(trained_ebt.energy(noisy, path[2]).mean()) < float(trained_ebt.energy(noisy, path[0]).mean())
    assert torch.allclose(thought.path_energies[:, 0, 0], trained_ebt.energy(noisy, path[0]), atol=1e-5)
    assert mse[2] < 0.8 * mse[0]  # step 0 is the noisy input itself
    assert torch.equal(path[0], noisy)


def test_psnr_matches_the_formula():
    target = np.zeros((2, 3, 4, 4))
    estimate = target.copy()
    estimate[0] += 0.1  # MSE 0.01
    estimate[1, 0, 0, 0] = 1.0  # MSE 1 / 48
    assert psnr(estimate, target, data_range=2.0) == pytest.approx([10 * math.log10(4 / 0.01), 10 * math.log10(4 * 48)])
    assert psnr(target, target)[0] == np.inf


def test_time_of_sigma_matches_the_noise_level():
    for sigma in (0.05, 0.3, 1.0):
        ab = alpha_bar(torch.tensor(time_of_sigma(sigma)))
        assert float((1 - ab) / ab) == pytest.approx(sigma ** 2, rel=1e-4)


def test_ddim_from_the_matching_time_beats_the_noisy_input(trained_dit, photo_data):
    clean = photo_data[1]
    noisy = add_noise(clean, 0.3, seed=4)
    identity = float((noisy.clamp(-1, 1) - clean).pow(2).mean())
    for steps in (1, 5):
        denoised = trained_dit.denoise(noisy, 0.3, steps)
        assert float((denoised.clamp(-1, 1) - clean).pow(2).mean()) < 0.8 * identity


def test_passes_per_image_are_the_engine_record_for_the_ebt_and_one_forward_per_step_for_the_dit():
    torch.manual_seed(0)
    clean = torch.rand(5, 3, 8, 8) * 2 - 1
    noisy = add_noise(clean, 0.2, seed=0)
    for uphill in (False, True):  # reject_uphill makes the pipeline read the final energy: one more forward
        torch.manual_seed(0)
        think_cfg = dataclasses.replace(image_think(), reject_uphill=uphill)
        ebt = ImageEBTModule(TINY, think_cfg, TrainerConfig(), ImageTaskConfig(), SHAPE).eval()
        rows = ebt_rows(ebt, noisy, clean, steps=3, batch=3)  # two chunks: 3 + 2 images
        for k, row in enumerate(rows):
            record = ebt.denoise(noisy, k).record
            final_read = record is not None and bool(torch.isfinite(record.energies[k]).all())
            assert row["steps"] == k and row["backward_passes"] == k
            assert row["forward_passes"] == k + final_read == (record.forward_passes / 5 if record else 0)
            assert row["backward_passes"] == (record.backward_passes / 5 if record else 0)
            assert row["passes"] == row["forward_passes"] + row["backward_passes"]
            assert final_read == uphill
    dit = DiTModule(TINY, TrainerConfig(), SHAPE).eval()
    calls = []
    dit.model.register_forward_hook(lambda *_: calls.append(1))
    (row,) = dit_rows(dit, noisy, clean, sigma=0.2, steps=4, batch=3)
    assert len(calls) == 4 * 2  # 4 DDIM steps on each of the two chunks
    assert (row["steps"], row["forward_passes"], row["backward_passes"], row["passes"]) == (4, 4, 0, 4)


def _results(psnr: dict[tuple[str, int], float]) -> pd.DataFrame:
    """A results table at sigma 0.2: EBT PSNR per (split, steps) and a DiT at 10 steps (27 dB) in both splits."""
    rows = [{"split": split, "sigma": 0.2, "model": "ebt", "steps": k, "passes": 2 * k, "psnr": v}
            for (split, k), v in psnr.items()]
    return pd.DataFrame(rows + [{"split": split, "sigma": 0.2, "model": "dit", "steps": 10, "passes": 10, "psnr": 27.0}
                                for split in ("val", "test")])


def test_the_headline_reports_the_test_psnr_of_the_step_count_validation_chose():
    val = {("val", 0): 20.0, ("val", 1): 24.0, ("val", 2): 26.0, ("val", 3): 25.0}  # validation: 2 steps
    test = {("test", 0): 21.0, ("test", 1): 27.5, ("test", 2): 28.0, ("test", 3): 29.0}  # test alone: 3 steps
    frame = _results({**val, **test, ("val", 4): 30.0, ("test", 4): 31.0})  # 4 steps: past the headline's budget
    assert validation_steps(frame) == {0.2: 2}
    lines = headline(frame, [0.2], lambda s: f"{s:g}")
    assert "chosen per noise level on validation" in lines[0]
    assert lines[4] == "| 0.2 | 2 | 4 | 28.00 | 27.00 | +1.00 |"  # not 29.00 (3 steps), the test's own best
    tie = _results({("val", 1): 26.0, ("val", 2): 26.0, **test})
    assert validation_steps(tie) == {0.2: 1}  # a tie goes to the fewer steps
    no_val = headline(_results(test), [0.2], lambda s: f"{s:g}")
    assert "Not reported" in no_val[2] and len(no_val) == 4


TINY_CLI = ["runtime.threads=1", "model.dim=16", "model.depth=1", "model.heads=2", "trainer.max_steps=3",
            "trainer.batch_size=4", "trainer.progress_bar=false", "image.crop=8", "image.downscale=8",
            "image.eval_crops=4", "image.ebt_steps=2", "image.dit_steps=[1,2]", "image.test_sigmas=[0.1,0.5]",
            "image.grid_examples=1"]


def test_cli_runs_end_to_end_and_a_rerun_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["image", f"runtime.output_dir={out}", *TINY_CLI]) == 0
    table = (out / "image.csv").read_text()
    for part in ("identity", "ebt", "dit"):
        assert part in table
    assert (out / "image.md").exists() and (out / "plots" / "psnr_vs_passes.png").exists()
    assert (out / "plots" / "examples.png").exists()
    cells = sorted((out / "cells").rglob("*.json"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    capsys.readouterr()
    assert main(["image", f"runtime.output_dir={out}", *TINY_CLI]) == 0
    printed = capsys.readouterr().out
    assert "ebt: loaded" in printed and "dit: loaded" in printed
    assert [c.stat().st_mtime_ns for c in cells] == stamps  # finished cells are read, not recomputed
    assert (out / "image.csv").read_text() == table


def test_the_image_system1_recipe_runs_end_to_end_and_reports_thinking_and_verification(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["image", "experiment=image_system1", f"runtime.output_dir={out}", *TINY_CLI]) == 0
    printed = capsys.readouterr().out
    assert "training noise q_sample at level [0.1]" in printed
    frame = pd.read_csv(out / "image.csv")
    ebt = frame[frame["model"] == "ebt"]
    assert set(ebt["kind"]) == {"steps", "steps_scaled", "verify", "average", "oracle"}
    assert set(frame.loc[frame["model"] == "identity", "kind"]) == {"input"}
    assert set(frame.loc[frame["model"] == "dit", "kind"]) == {"ddim"}
    assert sorted(set(ebt.loc[ebt["kind"] == "steps_scaled", "steps"])) == [2]  # trained 1 step, read up to 2
    for (split, sigma), cell in ebt.groupby(["split", "sigma"]):  # every split and level, the unseen 0.5 too
        verify = cell[cell["kind"] == "verify"].set_index("candidates")
        oracle = cell[cell["kind"] == "oracle"].set_index("candidates")
        assert sorted(verify.index) == sorted(oracle.index) == [1, 2, 4]
        assert set(cell.loc[cell["kind"] == "verify", "steps"]) == {2}  # think.infer_steps
        assert (oracle["mse"] <= verify["mse"] + 1e-12).all() and (oracle["psnr"] >= verify["psnr"] - 1e-9).all()
        assert np.isfinite(verify.loc[4, "spearman"]) and np.isfinite(verify.loc[4, "pick_best"])
    assert set(ebt["sigma"]) == {0.1, 0.5}
    report = (out / "image.md").read_text()
    assert "EBT energy: unconditional, smooth L1 beta 1." in report
    assert "more thinking steps than trained (train_steps 1)" in report and "2 steps, alpha x 1/2" in report
    assert "self-verification, N starts at the noisy image, 2 steps each, inference Langevin std 0.05" in report
    assert "| 0.5 (unseen) |" in report


def test_cli_reads_a_folder_of_images(tmp_path, capsys):
    import skimage.data
    import skimage.io

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("coffee", "camera", "brick"):  # one colour and two grey photos, as PNG and JPEG files
        image = getattr(skimage.data, name)()[:64, :64]
        skimage.io.imsave(folder / f"{name}.{'jpg' if name == 'coffee' else 'png'}", image, check_contrast=False)
    out = tmp_path / "run"
    assert main(["image", f"image.photos={folder}", f"runtime.output_dir={out}", *TINY_CLI, "image.downscale=2",
                 "image.models=[ebt]", "image.splits=[test]"]) == 0
    assert "test ['brick']" in capsys.readouterr().out  # sorted names: brick -> test, camera -> val, coffee -> train
    table = (out / "image.csv").read_text()
    assert "ebt" in table and "dit" not in table


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["image", f"image.photos={empty}", *TINY_CLI]) == 2
    assert "holds no image files" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    assert main(["image", f"image.photos={broken}", *TINY_CLI]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "a.png" in err
    assert main(["image", f"runtime.output_dir={tmp_path / 'x'}", *TINY_CLI, "image.crop=128"]) == 2
    assert "smaller than image.crop=128" in capsys.readouterr().err
    assert main(["image", *TINY_CLI, "image.noise=salt_pepper"]) == 2
    assert "image.noise='salt_pepper'" in capsys.readouterr().err
    assert main(["image", *TINY_CLI, "image.test_sigmas=[0.1,-0.2]"]) == 2
    assert "image.test_sigmas" in capsys.readouterr().err
    assert main(["image", *TINY_CLI, "image.train_sigmas=[low]"]) == 2
    assert "train_sigmas" in capsys.readouterr().err
    assert main(["image", *TINY_CLI, "image.noise=q_sample", "image.test_sigmas=[0.1,2.0]"]) == 2
    err = capsys.readouterr().err
    assert "image.test_sigmas=[0.1, 2.0] is invalid: must be a non-empty list of levels in (0, 1]" in err
    assert main(["image", *TINY_CLI, "task.conditioning=none"]) == 2
    assert "task.conditioning='none'" in capsys.readouterr().err
    assert main(["image", f"runtime.output_dir={tmp_path / 'x'}", *TINY_CLI, "think.step_embedding=true"]) == 2
    assert "think.step_embedding=True is invalid for the image task" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written
