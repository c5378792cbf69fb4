"""The learning-rate plan and the stopping rule of both models' training, and the curve's flatness.

Pure Python and numpy (no torch): `Monitor` applies a `Plan` to a stream of -ELBO values, so that the rule is tested
on synthetic curves (tests/test_training_stopping.py)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Plan:
    """How a model trains: the learning-rate levels, when a level has converged, what happens then.

    Training starts at `lr`. Every `check_every` epochs the -ELBO averaged over the last `window` epochs is
    compared with the average over the `window` epochs before: the relative improvement
    `(before - last) / |last|`. When it stays below `tol` for `patience` checks in a row the current level
    has converged: the rate is multiplied by `lr_factor` (never below `lr_min`) and training goes on; at
    `lr_min` training stops (not before `min_epochs`). `max_epochs` is the ceiling.

    Divergence: a non-finite -ELBO, or a smoothed -ELBO that rises above the best one seen by more than
    `diverge_tol` (relative), stops the run; the caller restarts it from scratch at a lower rate.

    `level_epochs` > 0: every level above `lr_min` lasts exactly this many epochs instead (the rate falls at
    fixed epochs, whatever the -ELBO's noise does: models trained on parts of one data set, e.g. the shards of a
    run, take the same path); the plateau test then only ends training at `lr_min`.

    `flat_tol` > 0 (the reference model): the rule also needs the curve flat by the measure the run report grades
    (`flatness`: the relative change of the mean -ELBO between the last two tenths of the epochs so far) at most
    `flat_tol`; while it is not, training goes on (to `max_epochs` if need be). Without it a short window can
    call a plateau in noise while the curve as a whole still falls: two seeds of one reference stopped at
    epochs 150 and 240 of 250 (docs/output.md, "Stopping rule of the reference").

    `adaptive=False` is the tutorial: one fixed rate, all `max_epochs`, no stopping.
    """

    max_epochs: int
    lr: float
    lr_min: float
    lr_factor: float = 1 / 3
    tol: float = 1e-4
    window: int = 50
    check_every: int = 50
    patience: int = 2
    min_epochs: int = 0
    diverge_tol: float = 0.05
    adaptive: bool = True
    level_epochs: int = 0
    flat_tol: float = 0.0

    def __post_init__(self):
        if self.max_epochs < 1 or self.window < 1 or self.check_every < 1 or self.patience < 1 or self.level_epochs < 0:
            raise ValueError(f"invalid training plan {self}")
        if not (0 < self.lr_min <= self.lr) or not (0 < self.lr_factor < 1):
            raise ValueError(f"learning rates must satisfy 0 < lr_min <= lr and 0 < lr_factor < 1: {self}")

    def fixed(self) -> "Plan":
        """The same plan without stopping or rate changes (all max_epochs at lr)."""
        return replace(self, adaptive=False)

    def describe(self) -> str:
        if not self.adaptive:
            return f"{self.max_epochs} epochs at lr {self.lr:g} (fixed)"
        steps = f"every {self.level_epochs} epochs" if self.level_epochs else "per plateau"
        return (f"lr {self.lr:g} -> {self.lr_min:g} (x{self.lr_factor:.3g} {steps}), stop when the "
                f"{self.window}-epoch mean -ELBO improves by < {self.tol:g} (relative) for {self.patience} checks "
                f"every {self.check_every} epochs at lr {self.lr_min:g}; at most {self.max_epochs} epochs")


STOP_KINDS = {"stop": "converged", "max_epochs": "max_epochs", "diverged": "diverged"}  # Monitor's action -> kind


def stop_kind(summary: dict) -> str | None:
    """How a training JSON's run ended: `converged`, `max_epochs` or `diverged` (None: not recorded). JSONs written
    before `stop_kind` existed (e.g. a resumed run's) only have the sentence, which is read instead."""
    if summary.get("stop_kind"):
        return str(summary["stop_kind"])
    reason = str(summary.get("stop_reason") or "")
    if reason.startswith("converged"):
        return "converged"
    if reason.startswith("reached max_epochs"):
        return "max_epochs"
    return "diverged" if reason else None


class Monitor:
    """The plan applied to a stream of -ELBO values, one per epoch: what to do after each epoch.

    Pure Python (no torch), so that the rule is tested on synthetic curves. `update(elbo)` returns one of
    `continue`, `lower_lr` (the new rate is `self.lr`), `stop` (converged), `diverged` or `max_epochs`.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.lr = plan.lr
        self.elbo: list[float] = []
        self.level_start = 0  # epoch at which the current rate began
        self.below = 0  # consecutive checks below tol
        self.best = math.inf  # best smoothed -ELBO seen
        self.last_rel = math.nan
        self.events: list[dict] = []
        self.stop_reason: str | None = None  # a sentence, for people
        self.stop_kind: str | None = None  # a value of STOP_KINDS, for programs
        self.stopped_epoch: int | None = None
        self.converged_epoch: int | None = None  # where the stopping rule fired (also noted with fixed epochs)

    @property
    def epoch(self) -> int:
        return len(self.elbo)

    def _event(self, kind: str, text: str) -> None:
        self.events.append({"epoch": self.epoch, "event": kind, "lr": self.lr, "relative_improvement": self.last_rel,
                            "detail": text})

    def _finish(self, action: str, reason: str) -> str:
        self.stop_reason = reason
        self.stop_kind = STOP_KINDS[action]
        self.stopped_epoch = self.epoch
        self._event(action, reason)
        return action

    def _above_min(self) -> bool:
        return self.lr > self.plan.lr_min * (1 + 1e-6)

    def _lower(self, why: str) -> str:
        p = self.plan
        old, self.lr = self.lr, max(p.lr_min, self.lr * p.lr_factor)
        if self.lr < p.lr_min * (1 + 1e-6):  # a factor given in decimals (0.0667 for 1/15) lands on lr_min
            self.lr = p.lr_min
        self.level_start, self.below = self.epoch, 0
        self._event("lower_lr", f"{why}: lr {old:g} -> {self.lr:g}")
        return "lower_lr"

    def update(self, elbo: float) -> str:
        p = self.plan
        self.elbo.append(float(elbo))
        if not math.isfinite(elbo):
            return self._finish("diverged", f"-ELBO is {elbo} at epoch {self.epoch} (lr {self.lr:g})")
        if self.epoch >= p.max_epochs:
            return self._finish("max_epochs", f"reached max_epochs {p.max_epochs}")
        if p.adaptive and p.level_epochs and self._above_min() and self.epoch - self.level_start >= p.level_epochs:
            return self._lower(f"{p.level_epochs} epochs at lr {self.lr:g}")
        if self.epoch % p.check_every:
            return "continue"
        w = p.window
        if self.epoch - self.level_start < 2 * w:
            return "continue"
        last = float(np.mean(self.elbo[-w:]))
        before = float(np.mean(self.elbo[-2 * w : -w]))
        self.last_rel = (before - last) / max(abs(last), 1e-30)
        if p.adaptive and last > self.best + p.diverge_tol * abs(self.best):
            return self._finish("diverged", f"the {w}-epoch mean -ELBO rose to {last:.6g} from its best {self.best:.6g} "
                                            f"(> {p.diverge_tol:g} relative) at lr {self.lr:g}")
        self.best = min(self.best, last)
        self.below = self.below + 1 if self.last_rel < p.tol else 0
        if self.below < p.patience:
            return "continue"
        if not p.adaptive:  # fixed epochs: only note where the rule would have stopped training
            if self.converged_epoch is None and self.epoch >= p.min_epochs:
                self.converged_epoch = self.epoch
                self._event("converged", f"the stopping rule would have stopped here (relative improvement "
                                         f"{self.last_rel:.2e} < {p.tol:g}); training goes on (fixed epochs)")
            return "continue"
        if self._above_min():
            if p.level_epochs:  # the rate falls at fixed epochs, not at plateaus
                return "continue"
            return self._lower(f"plateau at lr {self.lr:g} (relative improvement {self.last_rel:.2e} < {p.tol:g})")
        if self.epoch < p.min_epochs:
            return "continue"
        if p.flat_tol > 0:
            flat = tail_change(self.elbo)
            if not flat <= p.flat_tol:  # NaN (too few epochs) included
                if not self.events or self.events[-1]["event"] != "not_flat":
                    self._event("not_flat", f"the rule fired but the -ELBO changed {flat:.2e} between the last two "
                                            f"tenths of the epochs (> {p.flat_tol:g}): training goes on")
                return "continue"
        self.converged_epoch = self.epoch
        return self._finish("stop", f"converged: the {w}-epoch mean -ELBO improved by {self.last_rel:.2e} (< tol {p.tol:g}, "
                                    f"relative) at {p.patience} checks in a row at the lowest lr {self.lr:g}")

    def summary(self) -> dict:
        return {
            "plan": asdict(self.plan),
            "epochs": self.epoch,
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason,
            "stop_kind": self.stop_kind,
            "converged_epoch": self.converged_epoch,
            "final_lr": self.lr,
            "lr_events": [e for e in self.events if e["event"] == "lower_lr"],
        }


#: the reference's stopping rule also needs its -ELBO flat to this (Plan.flat_tol): the run report's PASS for
#: elbo_flatness, so that a reference the rule stops is one the report calls converged
REF_FLAT_TOL = 1e-3


def flatness(history: pd.DataFrame, tail: float = 0.1) -> float:
    """Relative change of the mean -ELBO between the last two `tail` fractions of training (small = flat)."""
    return tail_change(history["elbo_train"].to_numpy(), tail)


def tail_change(elbo, tail: float = 0.1) -> float:
    """`flatness` of a sequence of -ELBO values (NaN when there are too few)."""
    y = np.asarray(elbo, dtype=float)
    k = max(1, int(len(y) * tail))
    if len(y) < 2 * k:
        return float("nan")
    last, before = y[-k:].mean(), y[-2 * k : -k].mean()
    return float(abs(before - last) / abs(last))
