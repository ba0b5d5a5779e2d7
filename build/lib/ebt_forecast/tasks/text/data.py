"""Text data: a folder of works split by work, token windows, and generated reasoning sets.

Contract: every batch is a dict of tensors `x` (B, S) input ids, `y` (B, S) next ids (y_i = x_{i+1})
and, for evaluation, `mask` (B, S) True where y_i is scored.

- `read_folder(path)`: the `.txt` files of a folder, sorted by name (DataError naming the path when the
  folder is missing, holds no .txt file, or only empty ones).
- `split_works(works, every)`: work i (sorted) goes to validation when i % every == 0, to test when
  i % every == 1, else to training; with fewer than 3 works every work is cut 80 / 10 / 10 by characters.
- `TokenWindows`: seeded random training windows of S + 1 tokens from one token stream.
- `eval_windows`: up to n non-overlapping windows at evenly spaced offsets (deterministic).
- `dyck_examples`, `arithmetic_examples`: seeded (prompt, completion) pairs; `pack_examples` scores the
  completion tokens only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ebt_forecast.errors import DataError

Work = tuple[str, str]  # (file name, text)


def read_folder(path: str | Path) -> list[Work]:
    """Every non-empty `.txt` file of a folder, sorted by file name."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"text corpus folder {str(folder)!r} does not exist")
    works = [(f.name, f.read_text(encoding="utf-8", errors="replace")) for f in sorted(folder.glob("*.txt"))]
    works = [(name, text) for name, text in works if text.strip()]
    if not works:
        raise DataError(f"text corpus folder {str(folder)!r} holds no non-empty .txt file")
    return works


def split_works(works: list[Work], every: int = 7) -> dict[str, list[Work]]:
    """Train / validation / test by work (sorted order), or by characters within works when there are < 3."""
    if len(works) < 3:
        out: dict[str, list[Work]] = {"train": [], "validation": [], "test": []}
        for name, text in works:
            a, b = int(0.8 * len(text)), int(0.9 * len(text))
            out["train"].append((name, text[:a]))
            out["validation"].append((name, text[a:b]))
            out["test"].append((name, text[b:]))
        return out
    return {"validation": [w for i, w in enumerate(works) if i % every == 0],
            "test": [w for i, w in enumerate(works) if i % every == 1],
            "train": [w for i, w in enumerate(works) if i % every not in (0, 1)]}


def token_stream(works: list[Work], encode, eot: int) -> np.ndarray:
    """The works' ids, each followed by the separator, as one int64 array."""
    ids: list[int] = []
    for _, text in works:
        ids.extend(encode(text))
        ids.append(eot)
    return np.asarray(ids, dtype=np.int64)


class TokenWindows(Dataset):
    """`length` training windows of `context_length` + 1 tokens at seeded random offsets."""

    def __init__(self, ids: np.ndarray, context_length: int, length: int, seed: int):
        if len(ids) < context_length + 2:
            raise DataError(f"the training split has {len(ids)} tokens: fewer than text.context_length + 2 = "
                            f"{context_length + 2}")
        self.ids, self.s = torch.from_numpy(ids), context_length
        self.offsets = np.random.default_rng(seed).integers(0, len(ids) - context_length - 1, size=length)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        w = self.ids[self.offsets[i]:self.offsets[i] + self.s + 1]
        return {"x": w[:-1], "y": w[1:]}


def eval_windows(ids: np.ndarray, context_length: int, n: int) -> dict[str, Tensor]:
    """Up to n non-overlapping windows of S + 1 tokens at evenly spaced offsets; every target scored."""
    s = context_length
    available = (len(ids) - 1) // s
    if available < 1:
        raise DataError(f"an evaluation split has {len(ids)} tokens: fewer than text.context_length + 1 = {s + 1}")
    picks = np.unique(np.linspace(0, available - 1, num=min(n, available)).round().astype(int))
    w = torch.from_numpy(np.stack([ids[p * s:p * s + s + 1] for p in picks]))
    return {"x": w[:, :-1], "y": w[:, 1:], "mask": torch.ones(len(w), s, dtype=torch.bool)}


# ------------------------------------------------------------------------------------------------
# generated reasoning sets (out of distribution): the completion is scored, the prompt is context

BRACKETS = ("()", "[]", "{}", "<>")


def dyck_examples(n: int, seed: int, min_length: int = 6, max_length: int = 20) -> list[tuple[str, str]]:
    """Prefixes of balanced strings over 4 bracket types with open brackets left; the completion closes them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length, stack, prefix = int(rng.integers(min_length, max_length + 1)), [], []
        for _ in range(length):
            if stack and (rng.random() < 0.45 or len(stack) >= 8):
                prefix.append(BRACKETS[stack.pop()][1])
            else:
                kind = int(rng.integers(len(BRACKETS)))
                stack.append(kind)
                prefix.append(BRACKETS[kind][0])
        if not stack:
            kind = int(rng.integers(len(BRACKETS)))
            stack.append(kind)
            prefix.append(BRACKETS[kind][0])
        out.append(("".join(prefix), "".join(BRACKETS[k][1] for k in reversed(stack)) + "\n"))
    return out


def arithmetic_examples(n: int, seed: int, max_digits: int = 3) -> list[tuple[str, str]]:
    """'a+b=' -> 'c\\n' with a, b of 1 to max_digits digits."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, max_digits + 1)))) for _ in range(2))
        out.append((f"{a}+{b}=", f"{a + b}\n"))
    return out


def pack_examples(examples: list[tuple[str, str]], encode, eot: int, context_length: int) -> dict[str, Tensor]:
    """Pack (prompt, completion) pairs into windows of S + 1 tokens (whole examples only, padded with the
    separator); `mask` marks the targets that are completion tokens. Prompt and completion are encoded
    apart, so no token straddles the boundary."""
    s = context_length
    rows, masks, ids, scored = [], [], [], []
    for prompt, completion in examples:
        p, c = encode(prompt), encode(completion)
        if len(p) + len(c) > s + 1:
            continue
        if len(ids) + len(p) + len(c) > s + 1:
            rows.append(ids + [eot] * (s + 1 - len(ids)))
            masks.append(scored + [False] * (s + 1 - len(scored)))
            ids, scored = [], []
        ids += p + c
        scored += [False] * len(p) + [True] * len(c)
    if ids:
        rows.append(ids + [eot] * (s + 1 - len(ids)))
        masks.append(scored + [False] * (s + 1 - len(scored)))
    if not rows:
        raise DataError(f"no generated example fits text.context_length={s}")
    w, m = torch.tensor(rows), torch.tensor(masks)
    return {"x": w[:, :-1], "y": w[:, 1:], "mask": m[:, 1:]}
