"""Experiments and benchmark helpers of the source checkout (not part of the installed package).

* :mod:`experiments.l2_vs_bn` — ``keras-normreg experiment l2-vs-bn``: BN + L2 vs unit norm vs no BN
  on MNIST-1D, with a Markdown report (prose in ``experiments/templates/l2_vs_bn.md``) and plots.
* :mod:`experiments.eta_only` — ``keras-normreg experiment eta-only``: with the BN'd kernels on the
  sphere, is tuning η alone enough? Four arms of grids × 3 seeds on MNIST-1D, a report (prose in
  ``experiments/templates/eta_only.md``), table, plots and the random-search statistic. A
  package split by job as ``experiments.grokking`` is: ``runs`` (settings, the equilibrium
  theory and the grids, one training run), ``analysis`` (the summary and the search
  statistic), ``report`` (table, figures, Markdown), ``study`` (the run of the study and its
  command line).
* :mod:`experiments.grokking` — ``keras-normreg experiment grokking``: on modular addition, does the
  sphere (Q/K on the sphere, nGPT) remove the delay between memorizing and generalizing, and the
  decay hyperparameter? AdamW / Adam + L2 over λ, the sphere arms over η, a reference; a report
  (prose in ``experiments/templates/grokking.md``), figures and the random-search statistic.
* :mod:`experiments._report` — the ``<!-- @section name -->`` template format both reports use.
* :mod:`experiments.compare` — invariance-aware search: trials each parametrization (λ, η) or
  (ηλ, η) needs to reach a target (used by ``bench/bench_tuning.py``).

They import ``keras_normreg``; nothing in ``keras_normreg`` imports them (the CLI's ``study``
subcommand loads the study's module from the checkout it runs in).
"""
