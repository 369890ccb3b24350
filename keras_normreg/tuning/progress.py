"""What a study prints while it runs: a line when a trial starts and one when it ends.

:class:`ProgressDisplay` is the oracle's display (keras-tuner calls it for every trial): the
count of trials that ended against the budget, the best score so far and an ETA from this
session's pace (``trial 3/12 done, best val_accuracy 0.9300, ETA 1m20s``). The helpers format
durations and a trial's point; :func:`trials_done` is what the budget counts.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Mapping

from keras_normreg import _compat
from keras_normreg.tuning import space as nr_space

__all__ = ["ProgressDisplay", "describe", "format_duration", "progress_line", "trials_done"]

# keras-tuner's distribution helpers (has_chief_oracle, is_chief_oracle)
kt_dist = _compat.kt_distribute()


def format_duration(seconds: float) -> str:
    """``45s``, ``1m20s``, ``2h05m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def progress_line(done: int, total: int | None, objective: str, best: float | None,
                  eta_seconds: float | None) -> str:
    """``trial 3/12 done, best val_accuracy 0.9300, ETA 1m20s``."""
    best_s = "n/a" if best is None else f"{best:.4f}"
    eta = "?" if eta_seconds is None else format_duration(eta_seconds)
    return f"trial {done}/{total if total is not None else '?'} done, best {objective} {best_s}, ETA {eta}"


def trials_done(oracle) -> int:
    """Trials that ended for good (completed or failed) — what the budget counts."""
    return len(set(oracle.end_order))


def describe(values: Mapping) -> str:
    """A trial's point in one line: ``norm=batch decay=decoupled lr=0.1 λ=0.001 ηλ=0.0001``."""
    p = nr_space.decode(values)
    parts = [f"norm={p['norm']}", f"decay={p['decay']}", f"lr={p['learning_rate']:.3g}"]
    if p["lambda"] is not None:
        parts += [f"λ={p['lambda']:.3g}", f"ηλ={p['eta_lambda']:.3g}"]
    if "tuner/epochs" in values:
        parts.append(f"epochs={values['tuner/epochs']}")
    return " ".join(parts)


class ProgressDisplay(_compat.kt_display_class()):
    """The oracle's display: one line when a trial starts and one when it ends, with the
    count against the budget, the best score so far and an ETA from this session's pace
    (trials finished per second since the session started, workers included)."""

    def __init__(self, oracle, total: int | None, out=None):
        super().__init__(oracle=oracle, verbose=1)
        self.total = total
        self.out = out
        self.session_start = time.monotonic()
        self.session_done = 0
        self._begun = {}

    def _print(self, text):
        print(text, file=self.out or sys.stdout, flush=True)

    def on_trial_begin(self, trial):
        if self.verbose < 1:
            return
        now = datetime.datetime.now()
        self.trial_start[trial.trial_id] = now
        if self.search_start is None:
            self.search_start = now
        self.trial_number[trial.trial_id] = len(self.oracle.trials)
        self._begun[trial.trial_id] = time.monotonic()
        who = [tid for tid, t in self.oracle.ongoing_trials.items()
               if t.trial_id == trial.trial_id]
        on = f" on {who[0]}" if who and kt_dist.has_chief_oracle() else ""
        self._print(f"trial {trial.trial_id} started{on}: {describe(trial.hyperparameters.values)}")

    def eta(self, done: int) -> float | None:
        if self.total is None or self.session_done == 0:
            return None
        pace = (time.monotonic() - self.session_start) / self.session_done
        return pace * max(0, self.total - done)

    def on_trial_end(self, trial):
        if self.verbose < 1:
            return
        self.session_done += 1
        done = trials_done(self.oracle)
        best = [t for t in self.oracle.get_best_trials(1) if t.status == "COMPLETED"]
        best_score = best[0].score if best else None
        took = self._begun.pop(trial.trial_id, None)
        took_s = "" if took is None else f" in {format_duration(time.monotonic() - took)}"
        score = "failed" if trial.status != "COMPLETED" else \
            f"{self.oracle.objective.name} {trial.score:.4f}"
        line = progress_line(done, self.total, self.oracle.objective.name, best_score,
                             self.eta(done))
        self._print(f"{line}  [trial {trial.trial_id}: {score}{took_s}]")
