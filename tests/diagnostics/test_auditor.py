"""diagnostics.scale_invariant_weights: graph walk + numeric probe."""

import keras
import numpy as np
import pytest

from keras_normreg import _compat, zoo
from keras_normreg._invariance import explain_scale_invariance
from keras_normreg.diagnostics import InvarianceReport, scale_invariant_weights

L = keras.layers


def _x(shape, n=16, seed=0):
    return np.random.RandomState(seed).randn(n, *shape).astype("float32")


def _conv_kernels(model):
    """Independent reference: every Conv kernel of a zoo model sits right before a BN."""
    out = set()
    for layer in _compat.flatten_layers(model):
        if isinstance(layer, (L.Conv1D, L.Conv2D)):
            out.add(layer.kernel.path)
    return out


ZOO_CASES = [("cnn1d", None), ("cnn_digits", None), ("mlp", None), ("resnet20", (16, 16, 3))]


@pytest.mark.parametrize("name,input_shape", ZOO_CASES)
def test_zoo_conv_before_bn_flagged_final_dense_not(name, input_shape):
    if name not in zoo.list_models():
        pytest.skip(f"{name} not in the zoo")
    model = zoo.create(name, **({"input_shape": input_shape} if input_shape else {}))
    shape = input_shape or zoo.get_spec(name).input_shape
    report = scale_invariant_weights(model, _x(shape, n=8))
    assert isinstance(report, InvarianceReport)
    invariant = set(report.invariant)
    if name == "mlp":
        expected = {"dense1/kernel", "dense2/kernel"}
    else:
        expected = _conv_kernels(model)
    assert expected and invariant == expected
    row = report["classifier/kernel"]
    assert not row.invariant and not row.graph and row.probe is False
    # the classifier is linear in its kernel: scaling it by 3 scales the logits' deviation
    assert row.change > 0.5
    for path in expected:
        assert report[path].graph and report[path].probe and report[path].change < 1e-2
    # BN gammas are never reported invariant (the walk cannot prove it)
    assert not any(p.endswith("gamma") for p in invariant)


def test_audit_leaves_every_variable_unchanged():
    model = zoo.create("cnn1d", dropout=0.3)
    before = [v.numpy().copy() for v in model.variables]
    scale_invariant_weights(model, _x((40, 1)))
    after = [v.numpy() for v in model.variables]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_change_matches_hand_computed_linear_model():
    # f(x) = x W (no bias, no norm): scaling W by c changes the output by |c - 1| exactly
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(3, use_bias=False, name="lin")(inp))
    x = _x((5,))
    for factor in (3.0, 0.5):
        row = scale_invariant_weights(model, x, factor=factor)["lin/kernel"]
        np.testing.assert_allclose(row.change, abs(factor - 1), rtol=1e-5)
        assert not row.invariant and row.agree


def test_change_matches_numpy_for_bn_kernel():
    # Dense(no bias) -> BN(eps) in training mode, computed in NumPy: y = (a - mean)/sqrt(var+eps)
    eps = 1e-3
    inp = keras.Input((4,))
    model = keras.Model(inp, L.BatchNormalization(epsilon=eps, center=False, scale=False,
                                                  name="bn")(L.Dense(3, use_bias=False,
                                                                     name="d")(inp)))
    x = _x((4,), n=6).astype("float64")
    w = model.get_layer("d").kernel.numpy().astype("float64")

    def f(w):
        a = x @ w
        return (a - a.mean(0)) / np.sqrt(a.var(0) + eps)

    ref = np.linalg.norm(f(3 * w) - f(w)) / np.linalg.norm(f(w))
    row = scale_invariant_weights(model, x.astype("float32"))["d/kernel"]
    assert row.invariant and row.graph and row.probe
    np.testing.assert_allclose(row.change, ref, rtol=1e-2, atol=1e-7)


def test_disagreement_probe_invariant_but_graph_cannot_prove():
    # a Lambda that normalizes: the walk does not know it, the probe sees invariance
    inp = keras.Input((6,))
    h = L.Dense(8, use_bias=False, name="d")(inp)
    h = L.Lambda(lambda t: t / keras.ops.norm(t, axis=-1, keepdims=True), name="l2n")(h)
    model = keras.Model(inp, L.Dense(3, name="head")(h))
    report = scale_invariant_weights(model, _x((6,)))
    row = report["d/kernel"]
    assert row.graph is False and row.probe is True and row.agree is False
    assert row.invariant is False
    assert row.reason.startswith("DISAGREEMENT") and "l2n" in row.reason
    assert report.disagreements == ["d/kernel"]
    assert "DISAGREEMENT" in str(report)


def test_disagreement_graph_invariant_but_probe_measures_change():
    # BN with an epsilon far above the batch variance: invariant in theory, not in numbers
    inp = keras.Input((6,))
    h = L.Dense(8, use_bias=False, kernel_initializer=keras.initializers.RandomNormal(0, 0.01),
                name="d")(inp)
    h = L.BatchNormalization(epsilon=10.0, name="bn")(h)
    model = keras.Model(inp, L.Dense(3, name="head")(h))
    row = scale_invariant_weights(model, _x((6,)))["d/kernel"]
    assert row.graph is True and row.probe is False and row.agree is False
    assert row.invariant is False and row.change > 1e-2
    assert row.reason.startswith("DISAGREEMENT") and "epsilon" in row.reason


def test_probe_off_gives_graph_verdict_only():
    model = zoo.create("cnn_digits")
    report = scale_invariant_weights(model, None, probe=False)
    assert set(report.invariant) == _conv_kernels(model)
    assert all(r.probe is None and np.isnan(r.change) for r in report)


def test_subset_and_markdown():
    model = zoo.create("cnn_digits")
    report = scale_invariant_weights(model, _x((8, 8, 1)),
                                     variables=["block1_conv/kernel", "classifier/kernel"])
    assert [r.path for r in report] == ["block1_conv/kernel", "classifier/kernel"]
    md = report.to_markdown()
    assert md.count("\n") == 3 and "| block1_conv/kernel | yes | yes |" in md


def test_dropout_probe_is_deterministic():
    model = zoo.create("mlp", dropout=0.5)
    report = scale_invariant_weights(model, _x((40,)))
    assert report.noise == 0.0
    assert set(report.invariant) == {"dense1/kernel", "dense2/kernel"}


def test_errors():
    model = zoo.create("cnn_digits")
    x = _x((8, 8, 1))
    with pytest.raises(ValueError, match=r"`factor`.*Received: factor=1"):
        scale_invariant_weights(model, x, factor=1)
    with pytest.raises(ValueError, match=r"`factor`.*Received: factor=-2"):
        scale_invariant_weights(model, x, factor=-2)
    with pytest.raises(ValueError, match=r"`rtol`.*Received: rtol=0"):
        scale_invariant_weights(model, x, rtol=0)
    with pytest.raises(ValueError, match=r"at least 2 examples"):
        scale_invariant_weights(model, x[:1])
    with pytest.raises(ValueError, match=r"`model`.*Received: model='net'"):
        scale_invariant_weights("net", x)
    with pytest.raises(ValueError, match=r"`probe`.*Received: probe='yes'"):
        scale_invariant_weights(model, x, probe="yes")
    with pytest.raises(ValueError, match=r"not analysed.*Received: variables='nope/kernel'"):
        scale_invariant_weights(model, x, variables=["nope/kernel"])
    unbuilt = keras.Sequential([L.Dense(2)])
    with pytest.raises(ValueError, match=r"built"):
        scale_invariant_weights(unbuilt, x)


def test_rows_carry_the_structured_verdicts():
    """The auditor's graph column and reason are the fields of the invariance analysis."""
    model = zoo.create("cnn_digits")
    report = scale_invariant_weights(model, None, probe=False)
    analysis = explain_scale_invariance(model)
    assert [r.path for r in report] == list(analysis)
    for row in report:
        assert (row.graph, row.reason) == (analysis[row.path].invariant,
                                           analysis[row.path].reason)
    assert not hasattr(report, "as_dict")
