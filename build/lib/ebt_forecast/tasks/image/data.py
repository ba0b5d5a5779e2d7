"""Photos -> whole-image splits -> seeded crops with noise (Gaussian or the reference's q_sample), as dict batches.

Contract: `load_photos(folder)` returns {name: float32 array (3, H, W) in [-1, 1]} (grey photos are
repeated over the three channels; an alpha channel is dropped); `split_photos` assigns whole photos to
training, validation and test; `TrainCrops` is the training Dataset (index i -> one seeded draw: a random
crop of a random training photo, a flip, a training noise level, and the DiT's time and noise);
`eval_crops` cuts a fixed set of crops of held-out photos and `add_noise` corrupts them reproducibly.

Corruptions (`image.noise`), of a clean image x by standard normal noise eps at a level:
    gaussian:  y = x + level * eps                                      (level = the pixel std)
    q_sample:  y = sqrt(abar) x + sqrt(1 - abar) eps                    (the official `ebt_denoise.py`)
where abar = prod_{s <= 99} (1 - beta_s) over the linear DDPM schedule of T = int(100 / level) steps, scaled
for T steps as guided-diffusion / DiT's `get_named_beta_schedule("linear", T)` does: beta_s = linspace(
1e-4 k, 0.02 k, T) with k = 1000 / T (float64). The reference builds that schedule
(`create_diffusion(diffusion_steps=int(diffusion_steps / level))`) but noises at t = diffusion_steps - 1 = 99
(its `--diffusion_steps 100`), not at the schedule's own last step T - 1 (where abar ~ 4e-5: pure noise).
Level 0.1: T = 1000, signal x 0.947, noise std 0.321; 0.05: 0.985 / 0.171; 0.2: 0.812 / 0.583;
0.3: 0.629 / 0.777; 0.5: 0.277 / 0.961. `as_gaussian` maps a q_sample image to the same image in the
Gaussian form (y / sqrt(abar), std sqrt((1 - abar) / abar)), which the DiT's DDIM start reads.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ebt_forecast.errors import DataError

Q_SAMPLE_STEPS = 100  # the reference's --diffusion_steps: the schedule has int(100 / level) steps, noised at step 99

# real photographs shipped inside scikit-image (skimage.data) and scikit-learn (load_sample_images)
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")
SKLEARN_PHOTOS = ("china", "flower")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def to_unit_range(image: np.ndarray, name: str) -> np.ndarray:
    """An image (H, W), (H, W, 3) or (H, W, 4), integer or float, -> float32 (3, H, W) in [-1, 1]."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise DataError(f"image {name!r} has shape {a.shape}: need (H, W), (H, W, 3) or (H, W, 4)")
    a = a[..., :3]
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / np.iinfo(a.dtype).max
    else:
        a = a.astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.ascontiguousarray(a.transpose(2, 0, 1) * 2.0 - 1.0)


def bundled_photos() -> dict[str, np.ndarray]:
    """The default photos: scikit-image's bundled photographs and scikit-learn's two sample images."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {name: to_unit_range(getattr(skimage.data, name)(), name) for name in SKIMAGE_PHOTOS}
    sample = load_sample_images()
    for path, image in zip(sample.filenames, sample.images):
        photos[Path(path).stem] = to_unit_range(image, Path(path).stem)
    return photos


def folder_photos(folder: str | Path) -> dict[str, np.ndarray]:
    """Every image file in `folder` by file stem; DataError names an empty folder or an unreadable file."""
    import skimage.io

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image.photos={str(folder)!r} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise DataError(f"image.photos={str(folder)!r} holds no image files ({', '.join(EXTENSIONS)})")
    photos = {}
    for path in files:
        try:
            image = skimage.io.imread(path)
        except Exception as err:  # any decoder's failure: name the file
            raise DataError(f"cannot read image {str(path)!r}: {type(err).__name__}: {err}") from None
        photos[path.stem] = to_unit_range(image, str(path))
    return photos


def box_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping factor x factor blocks (anti-aliased downscaling) of a (C, H, W) array."""
    if factor == 1:
        return image
    c, h, w = image.shape
    h, w = h // factor * factor, w // factor * factor
    return image[:, :h, :w].reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def load_photos(folder: str | None, downscale: int, crop: int) -> dict[str, np.ndarray]:
    """The photos (bundled when folder is None), downscaled; DataError names one smaller than a crop."""
    photos = bundled_photos() if folder is None else folder_photos(folder)
    out = {}
    for name, image in photos.items():
        image = box_downscale(image, downscale).astype(np.float32)
        if min(image.shape[1:]) < crop:
            raise DataError(f"image {name!r} is {image.shape[2]} x {image.shape[1]} pixels after image.downscale="
                            f"{downscale}: smaller than image.crop={crop}")
        out[name] = image
    return out


def split_photos(names: list[str], split_every: int) -> dict[str, list[str]]:
    """Whole photos by sorted name: i % split_every == 0 -> test, == 1 -> val, else train (each non-empty)."""
    names = sorted(names)
    if len(names) < 3:
        raise DataError(f"need at least 3 photos (training, validation, test), got {len(names)}: {names}")
    splits = {"train": [], "val": [], "test": []}
    for i, name in enumerate(names):
        splits["test" if i % split_every == 0 else "val" if i % split_every == 1 else "train"].append(name)
    return splits


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size x size crop at a uniform position."""
    _, h, w = image.shape
    top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    return image[:, top:top + size, left:left + size]


def linear_betas(steps: int) -> np.ndarray:
    """The linear DDPM schedule of `steps` steps, scaled as guided-diffusion's `get_named_beta_schedule("linear")`:
    linspace(1e-4 k, 0.02 k, steps) with k = 1000 / steps (float64; steps = 1000 is Ho et al.'s schedule)."""
    k = 1000.0 / steps
    return np.linspace(1e-4 * k, 0.02 * k, steps, dtype=np.float64)


def q_sample_coefficients(level: float) -> tuple[float, float]:
    """(sqrt(abar), sqrt(1 - abar)) of the reference's corruption at `level` in (0, 1]: step Q_SAMPLE_STEPS - 1 of
    `linear_betas(int(Q_SAMPLE_STEPS / level))` (module docstring)."""
    steps = int(Q_SAMPLE_STEPS / level)
    if not 0 < level <= 1 or steps < Q_SAMPLE_STEPS:
        raise ValueError(f"q_sample level {level!r} is invalid: must be in (0, 1]")
    abar = float(np.cumprod(1.0 - linear_betas(steps))[Q_SAMPLE_STEPS - 1])
    return abar ** 0.5, (1.0 - abar) ** 0.5


def corrupt(clean: Tensor, level: float, eps: Tensor, kind: str = "gaussian") -> Tensor:
    """The noisy image of `clean` at `level` from standard normal `eps` (module docstring: gaussian or q_sample)."""
    if kind == "gaussian":
        return clean + level * eps
    if kind == "q_sample":
        signal, noise = q_sample_coefficients(level)
        return signal * clean + noise * eps
    raise ValueError(f"noise kind {kind!r} is invalid: must be gaussian or q_sample")


def as_gaussian(noisy: Tensor, level: float, kind: str = "gaussian") -> tuple[Tensor, float]:
    """The noisy image in the form clean + sigma * eps and its sigma (the identity for gaussian noise)."""
    if kind == "gaussian":
        return noisy, level
    signal, noise = q_sample_coefficients(level)
    return noisy / signal, noise / signal


class TrainCrops(Dataset):
    """`length` seeded draws: crop of a training photo (uniform over photos), horizontal flip, noise of `kind` at one
    of `sigmas` (levels); also the DiT's time t ~ U[0, 1] and noise eps (the same crops train both models)."""

    def __init__(self, photos: list[np.ndarray], size: int, sigmas: list[float], length: int, seed: int,
                 kind: str = "gaussian"):
        self.photos, self.size, self.sigmas, self.length, self.seed = photos, size, list(sigmas), length, seed
        self.kind = kind

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        rng = np.random.default_rng((self.seed, i))
        crop = random_crop(self.photos[rng.integers(len(self.photos))], self.size, rng)
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        clean = torch.from_numpy(np.ascontiguousarray(crop))
        sigma = float(self.sigmas[rng.integers(len(self.sigmas))])
        noise = torch.from_numpy(rng.standard_normal(clean.shape, dtype=np.float32))
        eps = torch.from_numpy(rng.standard_normal(clean.shape, dtype=np.float32))
        return {"clean": clean, "noisy": corrupt(clean, sigma, noise, self.kind), "sigma": torch.tensor(sigma),
                "t": torch.tensor(rng.random(), dtype=torch.float32), "eps": eps}


def eval_crops(photos: list[np.ndarray], size: int, count: int, seed: int) -> Tensor:
    """`count` crops (count, 3, size, size) spread over held-out photos in turn, positions fixed by `seed`."""
    rng = np.random.default_rng((seed, 1))
    return torch.from_numpy(np.stack([random_crop(photos[i % len(photos)], size, rng) for i in range(count)]).copy())


def add_noise(clean: Tensor, sigma: float, seed: int, kind: str = "gaussian") -> Tensor:
    """`clean` corrupted at level sigma (gaussian: clean + sigma * N(0, 1); or q_sample), the noise fixed by
    (seed, sigma) so every model sees the same noisy images."""
    g = torch.Generator().manual_seed(seed * 1000003 + int(round(sigma * 1e6)))
    return corrupt(clean, sigma, torch.randn(clean.shape, generator=g), kind)
