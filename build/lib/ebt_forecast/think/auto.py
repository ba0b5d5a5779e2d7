"""Inference settings chosen on validation windows, before any test number is seen."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceSetting:
    """How many thinking steps, and how the thought candidates become samples."""

    steps: int
    selection: str

    @property
    def key(self) -> str:
        return f"{self.steps}:{self.selection}"


# step 0 is always on the menu, so thinking is only used where it helped on validation
AUTO_SETTINGS = tuple(InferenceSetting(s, sel) for s, sel in (
    (0, "proposal"), (0, "verified"), (0, "weighted"),
    (1, "refined"), (1, "verified"), (1, "weighted"),
    (2, "refined"), (2, "verified"), (2, "weighted")))


def choose_on_validation(
    score: Callable[[InferenceSetting], float], settings: Sequence[InferenceSetting] = AUTO_SETTINGS,
) -> tuple[InferenceSetting, dict[str, float]]:
    """The setting with the lowest validation score (ties: the cheaper, earlier one), and every score by key."""
    scores = {s.key: float(score(s)) for s in settings}
    best = min(settings, key=lambda s: scores[s.key])
    return best, scores
