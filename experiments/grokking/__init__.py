"""The ``grokking`` study: is grokking a weight-norm story, and does the sphere remove both the
delay and the decay hyperparameter?

An experiment of the source checkout, not part of the installed package. One command runs it::

    python -m experiments.grokking          # or: keras-normreg experiment grokking

and writes ``docs/study_grokking.md`` (the report, prose in
``experiments/templates/grokking.md``) and, under ``docs/study_grokking/``, ``results.json``
(settings, every run's curves, versions, date, command) and the figures. ``--render``
re-renders the report from ``results.json``; ``--dry-run`` prints the plan and the worst-case
time estimate from the measured per-step costs (:data:`runs.MEASURED_TIMING`);
``--calibrate`` times a short run per arm on the workers; ``--quick`` is the tests' miniature
(p = 11, width 16, 60 steps, one seed: seconds of training); ``--set NAME=VALUE`` changes any
field of :class:`Settings`.

The task: modular addition ``a + b mod p`` (p = 97), the zoo's ``gpt_modular`` (1 block,
width 64, 4 heads, causal, logits of the last position), trained on ``train[:30%]`` (2823
equations) and validated on the held-out ``train[30%:]`` (6586; every equation is in exactly
one of them), Adam(β₁ = 0.9, β₂ = 0.98) with batches of 512 (each epoch a new permutation,
so every training example is seen once per epoch), evaluated every ``eval_every`` = 100 steps
(one forward pass over both sets), a run stopped once validation accuracy has held 99% for
``patience`` = 3 evaluations, or at ``max_steps``.

The arms (:data:`runs.ARMS`):

(a) ``adamw``: Adam with decoupled decay (``DecoupledWeightDecay(Adam(η), λ)``, the matrices
    and embeddings decayed, biases and norm parameters not), λ ∈ (0, 0.1, 0.3, 1, 3) at η =
    1e-3, 3 seeds;
(b) ``l2``: Adam + the coupled penalty ``regularizers.L2(λ/2)`` (gradient λ·w, PyTorch's
    ``Adam(weight_decay=λ)``) on the same weights and grid, 2 seeds (no claim rests on it);
    its λ = 0 point is (a)'s λ = 0 runs (plain Adam in both: the same configuration);
(c) ``sphere``: the QK-norm GPT (``qk_norm=True``: with the pre-LN GPT the only
    scale-invariant weights are Q and K, and only behind a QK-norm), its Q/K kernels kept on
    the sphere (``DecoupledWeightDecay(Adam(η), 0, scale_invariant="sphere").bind(model)``),
    no λ anywhere: an η grid, 3 seeds;
(d) ``ngpt``: the nGPT preset (``ngpt=True``: every matrix and embedding on the unit sphere
    by its constraint), plain Adam, an η grid, 3 seeds;
(e) ``none``: no normalization layers and no decay, the reference, 2 seeds.

Per run (:func:`analysis.delay_stats`): steps to 99% training accuracy, to 95% and 99%
validation accuracy (each the start of the final stretch at or above it, so a run that fell
back does not count), the delay between them, and whether it generalized within the budget
(a run that did not has no delay, never a delay of zero); at every evaluation the norm of
each matrix / embedding and its net rotation per step over the interval (the angle between
the weights at two evaluations over the steps between: cheaper than a per-step monitor, and a
lower bound on the per-step angle).

Why the model and the budget are what they are: the full study must fit in < 90 min on the
2-core machine with 2 workers. Width 128 (the literature's) costs 60-75 ms of CPU per step here
(measured, not the ~22 ms first assumed), so its 43 runs of 8000 steps would need ~200 min; width
64 costs ~28 ms (pilots of 2026-12-06, seed 1, at load ~8) and still shows the delay plainly:
AdamW η = 1e-3, λ = 1 fitted the training set by step 500, stayed at ~30% validation accuracy
until step ~2,100 while the weight norm fell from 21 to 11, and held 99% validation from step
2,600 (width 128: ~300 and ~3,000). With early stops the 43 runs take ~75 min (worst case ~89,
``--dry-run``). λ <= 0.3 (a >= 3x slower drift of the norm) may not generalize within 8000 steps:
such runs count as not generalized. The literature's delays are 10^4–10^5 steps with full
batches; p is the issue's, the width is halved for the budget (the delay still shows).
"""

from .analysis import delay_stats, should_stop
from .report import render
from .runs import ARMS, MEASURED_TIMING, Settings, make_settings, train_one
from .study import DEFAULT_OUT, calibrate, cli, main, run_study

__all__ = ["ARMS", "DEFAULT_OUT", "MEASURED_TIMING", "Settings", "calibrate", "cli",
           "delay_stats", "main", "make_settings", "render", "run_study", "should_stop",
           "train_one"]
