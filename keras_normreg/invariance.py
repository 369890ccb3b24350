"""Which weights a model's function is invariant to rescaling (``W -> c W``, ``c > 0``).

The public contract of the scale-invariance analysis (the implementation is the private module
``keras_normreg._invariance``):

* :func:`find_scale_invariant` - ``{variable path: ScaleInvariance}`` for every weight the
  model's function is proved invariant to rescaling;
* :func:`explain_scale_invariance` - the same for every analysed weight, invariant or not, each
  with the reason;
* :class:`ScaleInvariance` - one frozen record per weight: the verdict, the normalizing layers,
  the layers passed on the way, the granularity and a reason for people.

Sphere mode (``DecoupledWeightDecay(scale_invariant="sphere")``), the auditor
(:func:`keras_normreg.diagnostics.scale_invariant_weights`), ``regularizers.apply`` and
:class:`keras_normreg.diagnostics.NormMonitor` all read these records' fields.

Idea
----
For one weight ``W`` we propagate a *symbolic state* through the Keras graph, telling for every
tensor how it depends on the scale ``c`` of ``W``:

* ``none``: does not depend on ``W`` at all;
* ``scaled``: positively homogeneous of degree 1, ``t(cW) = c t(W)``, possibly plus an
  additive term that does not depend on ``c`` and is constant along every axis except
  ``bias_axes`` (a layer's per-channel bias ``b`` gives ``c (x W) + b``);
* ``inv``: depends on ``W`` but not on its scale: a normalization layer has removed ``c``;
* ``broken``: depends on the scale in some other way (or in a way we do not analyse).

``W`` is scale-invariant when every model output is ``none`` or ``inv`` and at least one is
``inv``. The result is exact for the graph ops we know and conservative (``broken``) for the
others, so a weight is never *wrongly* declared invariant through an unknown op.

Rules (``s`` = a scaled input)
------------------------------
* normalization layers turn ``s`` into ``inv`` when they remove the additive term: the
  BatchNormalization family (keras BN, ``L1BatchNormalization``, ``TopKBatchNormalization``:
  all subtract a per-feature batch mean) removes a per-channel bias when the channel is one of
  its ``axis``; ``LayerNormalization`` only when the bias is constant over its normalized axes
  (so conv(+bias) -> LN over channels is *not* invariant; use ``use_bias=False``);
  ``GroupNormalization`` only with one channel per group; ``UnitNormalization``,
  ``RMSNormalization`` and ``LayerNormalization(rms_scaling=True)`` never (no mean subtraction),
  but are invariant without a bias;
* positively homogeneous activations keep ``s`` (``relu(c x) = c relu(x)`` for ``c > 0``): linear,
  ReLU (no ``max_value``/``threshold``), LeakyReLU, PReLU; with an additive term they break it;
* Dropout, SpatialDropout*, GaussianDropout, ActivityRegularization, Identity, Reshape,
  Flatten, Permute, RepeatVector, ZeroPadding*, Cropping*, UpSampling*, Max/AveragePooling*,
  Global*Pooling* keep ``s`` (with an additive term only those that keep it per-channel constant);
* a linear layer (Dense, EinsumDense, Conv*, DepthwiseConv*, SeparableConv*, Conv*Transpose)
  applied to ``s`` keeps it (its own bias becomes an additive term), so conv -> conv -> BN makes
  both kernels invariant;
* Add / Subtract / Average / Maximum / Minimum keep ``s`` only when *every* input is ``s``: a
  residual add with an unscaled branch breaks invariance; Multiply keeps ``s`` when exactly one
  input is ``s`` and the others do not depend on the scale;
* Concatenate of ``s`` with branches that do not scale gives a *partially* scaled tensor (only
  some channels scale); elementwise homogeneous ops keep it and a BatchNormalization-family layer
  normalizing per channel of the concatenation axis removes it (DenseNet: concat -> BN), anything
  else breaks it;
* a layer may declare its rule with the class attribute ``keras_normreg_scale_rule`` (the
  transformer zoo's layers do; the analysis needs no import of them):

  - ``"linear"``: one input, output homogeneous of degree 1 in it with no additive term
    (``x * s`` for a learned ``s``, selecting a token): keeps an unbiased ``s``, breaks a
    biased one;
  - ``"attention"``: inputs ``(q, k, v)`` of shape (batch, tokens, heads, head_dim),
    output ``softmax(f(q, k)) v``: a scaled ``q`` or ``k`` breaks it (softmax is not
    homogeneous); a scaled ``v`` stays scaled (each row of attention weights sums to 1, so an
    additive term constant along the token axis passes unchanged; one varying along tokens
    breaks it);
* anything else that receives ``s`` (Lambda, custom layers without a declared rule, Keras'
  MultiHeadAttention, raw ops we do not know) breaks it.

A ``WeightNormalization`` wrapper's direction ``v`` is invariant by construction (the output
depends on ``v / ||v||``); its gain ``g`` is analysed like a kernel.

"Invariant" is meant in training mode and up to the normalization's epsilon: in inference mode BN
uses moving statistics, which do not rescale; and where a channel's variance is not large against
epsilon (tiny feature maps, small batches) the invariance is only approximate. Checked on
keras.applications ResNet50, DenseNet121, EfficientNetB0 and MobileNetV3Small: with epsilon
set to 1e-12, scaling any kernel found invariant by 3 changes the training-mode output by < 1e-5
(relative), while the others change it by > 1e-2.

Result: one frozen :class:`ScaleInvariance` per analysed weight, with the verdict
(``invariant``), the layers that remove the scale (``normalizers``) and those passed on the way
(``via``), the ``granularity`` of the invariance (per output unit, whole tensor or given axes:
what sphere mode retracts over) and a ``reason`` for humans. Code reads the fields; the reason
text is for people and may change.

Limits: functional models and Sequential models, nested in each other to any depth, are handled;
subclassed models have no graph to read (every weight is reported as not invariant, with that
reason); weights inside wrappers other than WeightNormalization (TimeDistributed,
Bidirectional, ...) are reported as not invariant; a weight used by a layer called several times
along the same path is reported as not invariant.
"""

from keras_normreg._invariance import (
    ScaleInvariance,
    explain_scale_invariance,
    find_scale_invariant,
)

__all__ = ["ScaleInvariance", "explain_scale_invariance", "find_scale_invariant"]
