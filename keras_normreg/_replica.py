"""Cross-replica reductions for synchronized statistics: the one backend-specific module of
the layers (one module per concern, a branch per backend).

* **TensorFlow**: the ``tf.distribute`` replica context. Inside ``strategy.run`` (e.g.
  ``model.fit`` under a ``MirroredStrategy``) with more than one replica in sync, every replica
  holds a slice of the batch and the statistics are all-reduced / all-gathered here.
  TensorFlow is imported lazily, only on this backend.
* **JAX**: no replica context. Under ``keras.distribution.DataParallel`` the train step is one
  SPMD program over the *global* (sharded) batch, so the batch statistics a layer computes
  already are the global ones (XLA inserts the collectives); ``synchronized`` changes nothing.
* **torch**: no replica context. Keras' torch backend has no in-graph replicas; under
  ``torch.distributed`` (DDP) each process normalizes its own batch and ``synchronized`` has
  no effect.

``ctx`` below is what :func:`replica_context` returned; ``None`` means "the local statistics
are the global ones" and makes every reduction the identity.
"""

from __future__ import annotations

import keras

__all__ = ["all_gather", "all_reduce_sum", "replica_context"]


def replica_context():
    """The replica context to reduce statistics over, or None.

    Not None only on the TensorFlow backend inside ``strategy.run`` with more than one replica
    in sync. In a cross-replica context (``strategy.scope()`` outside ``run``), with a single
    replica, or on the JAX / torch backends, the local statistics already are the global ones.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf  # heavy external package: only on the TensorFlow backend

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return None
    return ctx


def all_reduce_sum(ctx, value):
    """Sum ``value`` over replicas (identity when ``ctx`` is None)."""
    if ctx is None:
        return value
    import tensorflow as tf

    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def all_gather(ctx, value, axis):
    """Concatenate ``value`` of every replica along ``axis`` (identity when ``ctx`` is None)."""
    if ctx is None:
        return value
    return ctx.all_gather(value, axis=axis)
