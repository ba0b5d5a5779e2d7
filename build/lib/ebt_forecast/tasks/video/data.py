"""The video task's data: real clips decoded with PyAV, a generated moving-digits set, splits, training windows.

Frames are float32 arrays (T, 1, H, W) in [0, 1] (grayscale). A clip is `clip_length` consecutive frames; the
sequence models see clips of frame latents (N, L, d) and predict frames 1..L-1 from frames 0..L-2. Rollout
clips are longer (L - 1 true context frames, then max(rollout_steps) frames to predict autoregressively).

- Real videos (`read_video`, `read_folder`): every frame, centre-cropped to a square and resized with area
  averaging. A video of the training folder is split in time (first `train_fraction` of its frames train,
  the next half of the rest validation, the last part test; no setting is chosen on validation yet, so
  it is a gap in time between training and test frames); videos named in `heldout` are test-only (out of
  distribution). DataError names the folder or file at fault.
- Moving digits (`moving_digits`): sklearn's 8x8 digits, upscaled, moving in straight lines and bouncing off
  the walls of a square canvas, composited by maximum; every draw comes from one seeded generator. Digit
  images are split by index (every 5th image is a test digit), so test clips show unseen handwriting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ebt_forecast.errors import DataError
from ebt_forecast.tasks.base import config_key
from ebt_forecast.tasks.video.config import VideoRunConfig

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


# ------------------------------------------------------------------------------------------------
# real videos


def read_video(path: str | Path, size: int) -> np.ndarray:
    """Every frame of a video as (T, 1, size, size) float32 in [0, 1]: grayscale, centre square, area-resized."""
    import av

    path = Path(path)
    if not path.is_file():
        raise DataError(f"video {str(path)!r} does not exist")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{str(path)!r} has no video stream")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                w, h = frame.width, frame.height
                scale = size / min(w, h)  # short side -> size, then the centre square
                gray = frame.reformat(width=max(size, round(w * scale)), height=max(size, round(h * scale)),
                                      format="gray", interpolation="AREA").to_ndarray()
                top, left = (gray.shape[0] - size) // 2, (gray.shape[1] - size) // 2
                frames.append(gray[top:top + size, left:left + size])
    except DataError:
        raise
    except Exception as err:  # PyAV raises its own error types for corrupt or non-video files
        raise DataError(f"cannot decode video {str(path)!r}: {type(err).__name__}: {err}") from None
    if not frames:
        raise DataError(f"video {str(path)!r} has no frames")
    return (np.stack(frames)[:, None].astype(np.float32) / 255.0)


def read_folder(folder: str | Path, size: int) -> dict[str, np.ndarray]:
    """Every video in a folder (sorted by name) -> frames; DataError when the folder is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"video folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise DataError(f"video folder {str(folder)!r} holds no video ({', '.join(VIDEO_SUFFIXES)})")
    return {p.name: read_video(p, size) for p in files}


def cut_clips(frames: np.ndarray, clip_length: int, stride: int, name: str = "video") -> np.ndarray:
    """Clips (N, clip_length, ...) of consecutive frames every `stride` frames; DataError when too short."""
    if len(frames) < clip_length:
        raise DataError(f"{name}: a clip of {clip_length} frames is longer than its {len(frames)} frames")
    starts = range(0, len(frames) - clip_length + 1, stride)
    return np.stack([frames[s:s + clip_length] for s in starts])


def split_in_time(frames: np.ndarray, train_fraction: float) -> dict[str, np.ndarray]:
    """A training video's frames: the first `train_fraction` train, then half the rest validation, then test."""
    n = len(frames)
    a = int(round(n * train_fraction))
    b = a + (n - a) // 2
    return {"train": frames[:a], "validation": frames[a:b], "test": frames[b:]}


# ------------------------------------------------------------------------------------------------
# moving digits


def digit_images(size: int, split: str) -> np.ndarray:
    """sklearn's 1,797 8x8 digits upscaled to (n, size, size) in [0, 1]; every 5th image is a test digit."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
    keep = (np.arange(len(images)) % 5 == 0) if split == "test" else (np.arange(len(images)) % 5 != 0)
    return images.numpy()[keep]


def moving_digits(count: int, clip_length: int, *, canvas: int = 32, digits: int = 2, digit_size: int = 12,
                  speed: tuple[float, float] = (1.0, 2.0), split: str = "train", seed: int = 0) -> np.ndarray:
    """`count` clips (count, clip_length, 1, canvas, canvas): `digits` digits moving at `speed` pixels per frame
    (uniform in the range, uniform direction), bouncing off the walls, composited by maximum."""
    rng = np.random.default_rng(seed)
    images = digit_images(digit_size, split)
    span = canvas - digit_size
    out = np.zeros((count, clip_length, 1, canvas, canvas), dtype=np.float32)
    for c in range(count):
        for _ in range(digits):
            image = images[rng.integers(len(images))]
            pos = rng.uniform(0, span, size=2)
            angle, v = rng.uniform(0, 2 * np.pi), rng.uniform(*speed)
            vel = v * np.array([np.cos(angle), np.sin(angle)])
            for t in range(clip_length):
                y, x = np.rint(pos).astype(int)
                np.maximum(out[c, t, 0, y:y + digit_size, x:x + digit_size], image,
                           out=out[c, t, 0, y:y + digit_size, x:x + digit_size])
                pos = pos + vel
                for k in range(2):  # reflect off the walls
                    if pos[k] < 0:
                        pos[k], vel[k] = -pos[k], -vel[k]
                    elif pos[k] > span:
                        pos[k], vel[k] = 2 * span - pos[k], -vel[k]
    return out


# ------------------------------------------------------------------------------------------------
# training windows


class WeightedDraws(Dataset):
    """`count` training rows drawn once from a seed: row i is {key: an item of source j}, source j chosen with
    probability `weights[j]` (so a small real set is not drowned by generated digits), the item uniformly."""

    def __init__(self, sources: list[Tensor], weights: list[float], count: int, seed: int, key: str = "x"):
        g = torch.Generator().manual_seed(seed)
        p = torch.tensor(weights, dtype=torch.float64)
        which = torch.multinomial(p / p.sum(), count, replacement=True, generator=g)
        sizes = torch.tensor([len(s) for s in sources])
        item = (torch.rand(count, generator=g, dtype=torch.float64) * sizes[which]).long()
        self.sources, self.which, self.item, self.key = sources, which, item, key

    def __len__(self) -> int:
        return len(self.which)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {self.key: self.sources[int(self.which[i])][int(self.item[i])]}


@dataclass
class VideoSets:
    """Pixel clips (N, L, 1, H, W): training sources by name, and evaluation sets by name."""

    train: dict[str, np.ndarray]
    evaluation: dict[str, np.ndarray]  # in distribution first, then out of distribution
    ood: list[str]  # names of the out-of-distribution evaluation sets
    description: str
    key: str  # config_key of everything the clips depend on (files, splits, generator settings, seed)
    rollout: dict[str, np.ndarray] = field(default_factory=dict)  # longer clips (N, L - 1 + max k, ...) per set


def evenly(clips: np.ndarray, count: int) -> np.ndarray:
    """At most `count` clips, evenly spaced (deterministic)."""
    if len(clips) <= count:
        return clips
    return clips[np.linspace(0, len(clips) - 1, count).round().astype(int)]


def load_sets(cfg: VideoRunConfig, seed: int) -> VideoSets:
    """Build every split of the configured sources (DataError names a bad folder, file or clip length).

    digits: training clips (training digit images), evaluation "digits" (test digit images, the training motion),
    OOD "digits_more" (cfg.ood_digits digits) and "digits_fast" (cfg.ood_speed). clips: each video not held out
    split in time (clips within a part, never across), evaluation "clips" = the test parts; held-out videos are
    the OOD set "clips_heldout". Rollout clips (`rollout`, when `rollout_steps` is set): the same sets' clips
    extended to L - 1 + max(rollout_steps) frames (digits: the same draws, longer; videos: cut from the same
    parts, a set left out when every part is shorter). `key` does not depend on the rollout length."""
    n, size = cfg.clip_length, cfg.frame_size
    long = n - 1 + max(cfg.rollout_steps) if cfg.rollout_steps else 0
    train: dict[str, np.ndarray] = {}
    evaluation: dict[str, np.ndarray] = {}
    rollout: dict[str, np.ndarray] = {}
    ood: list[str] = []
    notes, key_parts = [], [n, size, seed]
    if "digits" in cfg.sources:
        kw = dict(canvas=size, digit_size=cfg.digit_size)
        speed, fast = tuple(cfg.speed), tuple(cfg.ood_speed)
        train["digits"] = moving_digits(cfg.train_clips, n, digits=cfg.digits, speed=speed, seed=seed + 1, **kw)
        for name, count, motion, k in [("digits", cfg.digits, speed, 3), ("digits_more", cfg.ood_digits, speed, 4),
                                       ("digits_fast", cfg.digits, fast, 5)]:  # a clip's draws precede its frames
            clips = moving_digits(cfg.eval_clips, max(n, long), digits=count, speed=motion, split="test",
                                  seed=seed + k, **kw)
            evaluation[name] = np.ascontiguousarray(clips[:, :n])
            if long:
                rollout[name] = clips[:, :long]
        ood += ["digits_more", "digits_fast"]
        notes.append(f"moving digits: {cfg.train_clips} training clips ({cfg.digits} digits, {speed[0]:g}-{speed[1]:g} "
                     f"px/frame); OOD {cfg.ood_digits} digits, and {fast[0]:g}-{fast[1]:g} px/frame")
        key_parts += [cfg.train_clips, cfg.eval_clips, cfg.digits, cfg.speed, cfg.ood_digits, cfg.ood_speed,
                      cfg.digit_size]
    if "clips" in cfg.sources:
        videos = read_folder(cfg.clips, size)
        missing = [name for name in cfg.heldout if name not in videos]
        if missing:
            raise DataError(f"video.heldout names {', '.join(map(repr, missing))}, not in {cfg.clips!r} "
                            f"(it holds {', '.join(videos)})")
        parts: dict[str, list[np.ndarray]] = {"train": [], "test": [], "heldout": []}
        longer: dict[str, list[np.ndarray]] = {"test": [], "heldout": []}  # rollout clips
        for name, frames in videos.items():
            split_parts = {"heldout": frames} if name in cfg.heldout else split_in_time(frames, cfg.train_fraction)
            for split, part in split_parts.items():
                if split == "validation":  # read by nothing yet: it keeps test frames apart from training frames
                    continue
                where = f"video.heldout {name!r}" if split == "heldout" else (
                    f"the {split} part of {name!r} ({len(frames)} frames, video.train_fraction={cfg.train_fraction})")
                parts[split].append(cut_clips(part, n, 1, where))
                if split in longer and long and len(part) >= long:
                    longer[split].append(cut_clips(part, long, 1, where))
        if not parts["train"]:
            raise DataError(f"every video in {cfg.clips!r} is held out (video.heldout): none left to train on")
        train["clips"] = np.concatenate(parts["train"])
        evaluation["clips"] = evenly(np.concatenate(parts["test"]), cfg.eval_clips)
        if parts["heldout"]:
            evaluation["clips_heldout"] = evenly(np.concatenate(parts["heldout"]), cfg.eval_clips)
            ood.append("clips_heldout")
        for split, name in [("test", "clips"), ("heldout", "clips_heldout")]:
            if longer[split]:
                rollout[name] = evenly(np.concatenate(longer[split]), cfg.eval_clips)
        trained_on = [v for v in videos if v not in cfg.heldout]
        notes.append(f"real videos in {cfg.clips!r}: {', '.join(trained_on)} split in time ({cfg.train_fraction:g} "
                     f"train, {len(train['clips'])} training clips); held out: {', '.join(cfg.heldout) or 'none'}")
        key_parts += [[(v, f.shape, float(f.sum())) for v, f in videos.items()], cfg.heldout, cfg.train_fraction,
                      cfg.eval_clips]
    order = [s for s in evaluation if s not in ood] + [s for s in evaluation if s in ood]
    evaluation = {s: evaluation[s] for s in order}
    description = "; ".join(notes) + f"; {n} frames per clip, {size}x{size} grayscale"
    rollout = {s: rollout[s] for s in order if s in rollout}
    return VideoSets(train, evaluation, ood, description, config_key(*key_parts), rollout)
