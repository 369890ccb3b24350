"""In-place updates of model variables from inside an optimizer step: the one backend-specific
module of the optimizers (one branch per backend).

:class:`~keras_normreg.optimizers.DecoupledWeightDecay` changes variables outside the wrapped
optimizer's own update (the decoupled decay before it, the sphere retraction after it). How
such an update reaches every copy of a variable depends on the backend:

* **TensorFlow**: under ``tf.distribute`` (MirroredStrategy, ...) ``optimizer.apply`` runs in a
  replica context and each variable is mirrored on every device. The update merges into the
  cross-replica context (``maybe_merge_call``) and goes through
  ``strategy.extended.update(var, fn)``, which runs ``fn`` on each per-device copy — the path
  Keras' TensorFlow optimizer takes for its own weight decay. Without a strategy ``fn`` runs
  once per variable. TensorFlow is imported lazily, only on this backend.
* **JAX**: no replica context. Under ``keras.distribution.DataParallel`` the train step is one
  SPMD program and a variable is one (replicated) global ``jax.Array``; inside the trainer's
  ``StatelessScope`` ``Variable.assign`` records the new value, which XLA keeps replicated when
  it is computed from replicated values only. A plain loop is the whole story.
* **torch**: a plain loop too (``Variable.assign`` copies in place under ``no_grad``; under
  ``torch.distributed`` each process updates its own copy from the same all-reduced
  gradients).
"""

from __future__ import annotations

import keras

__all__ = ["for_each_variable", "shrink"]


def for_each_variable(variables, fn):
    """Run ``fn(var)`` on every variable of ``variables`` (every per-device copy under
    ``tf.distribute``).

    ``fn`` receives the backend variable on TensorFlow (a ``tf.Variable``, possibly one device's
    copy of a mirrored one) and the ``keras.Variable`` itself on JAX and torch; it may use
    ``var.assign`` / ``var.assign_sub``, ``var.dtype`` and ``keras.ops`` on ``var``, which work
    on all of them.
    """
    variables = list(variables)
    if not variables:
        return
    if keras.backend.backend() == "tensorflow":
        _tf_for_each(variables, fn)
        return
    for var in variables:
        fn(var)


def shrink(var, factor):
    """``w ← w − factor·w`` in place, with the arithmetic of Keras' own weight decay on each
    backend, so that a decoupled decay equals Keras' ``weight_decay=`` bit for bit:
    ``w.assign_sub(w·factor)`` on TensorFlow and JAX, ``w ← w·(1 − factor)`` on torch (Keras'
    torch optimizers use ``torch._foreach_mul_(w, 1 − λ·lr)``). The two differ by a rounding
    (~1 ulp)."""
    if keras.backend.backend() == "torch":
        var.assign(var * (1 - factor))
    else:
        var.assign_sub(var * factor)


def _tf_for_each(variables, fn):
    import tensorflow as tf  # heavy external package: only on the TensorFlow backend

    tf_vars = [v.value if isinstance(v, keras.Variable) else v for v in variables]

    def merged(distribution, tf_vars):
        for var in tf_vars:
            distribution.extended.update(var, fn, group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(
        merged, tf.distribute.get_strategy(), tf_vars
    )
