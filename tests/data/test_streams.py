"""NumPy batches for fit on any backend: ArrayEpochs and array_batches."""

import numpy as np
import pytest

from keras_normreg.data.streams import ArrayEpochs, array_batches


def _xy(n=10):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return x, np.arange(n, dtype=np.int64)


def test_every_example_once_per_epoch_and_a_new_order_each_epoch():
    x, y = _xy(10)
    ds = ArrayEpochs(x, y, batch_size=4, seed=3)
    assert len(ds) == 3  # 4 + 4 + 2
    orders = []
    for _ in range(3):
        labels = np.concatenate([ds[i][1] for i in range(len(ds))])
        assert sorted(labels.tolist()) == list(range(10))
        orders.append(labels.tolist())
        ds.on_epoch_end()
    assert orders[0] != orders[1] != orders[2]
    # features travel with their labels
    bx, by = ds[0]
    np.testing.assert_array_equal(bx, x[by])


def test_orders_depend_on_seed_and_epoch_only():
    x, y = _xy(12)
    a, b = ArrayEpochs(x, y, 5, seed=1), ArrayEpochs(x, y, 5, seed=1)
    a.on_epoch_end()
    b.on_epoch_end()
    assert [a[i][1].tolist() for i in range(3)] == [b[i][1].tolist() for i in range(3)]
    # the same permutation as numpy's generator seeded with (seed, epoch)
    expected = np.random.default_rng([1, 1]).permutation(12)
    np.testing.assert_array_equal(np.concatenate([a[i][1] for i in range(3)]), expected)
    c = ArrayEpochs(x, y, 5, seed=2)
    c.on_epoch_end()
    assert [c[i][1].tolist() for i in range(3)] != [a[i][1].tolist() for i in range(3)]


def test_unshuffled_keeps_the_array_order():
    x, y = _xy(7)
    ds = ArrayEpochs(x, y, 3, shuffle=False)
    assert [ds[i][1].tolist() for i in range(len(ds))] == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("n, batch, devices, steps", [
    (10, 4, 2, 3),   # last batch of 2: a multiple of 2 devices, kept
    (11, 4, 2, 2),   # last batch of 3: not a multiple of 2, dropped
    (12, 4, 2, 3),   # no partial batch
    (9, 4, 1, 3),    # one device keeps every partial batch
])
def test_steps_with_devices(n, batch, devices, steps):
    x, y = _xy(n)
    ds = ArrayEpochs(x, y, batch, multiple_of=devices)
    assert len(ds) == ArrayEpochs.steps(n, batch, devices) == steps
    assert all(len(ds[i][1]) % devices == 0 for i in range(len(ds)))


def test_array_batches_in_order():
    x, y = _xy(5)
    batches = array_batches(x, y, 2)
    assert [b[1].tolist() for b in batches] == [[0, 1], [2, 3], [4]]


def test_errors_name_the_argument():
    x, y = _xy(4)
    with pytest.raises(ValueError, match=r"multiple of the 2 devices.*Received: data.batch_size=3"):
        ArrayEpochs(x, y, 3, multiple_of=2)
    with pytest.raises(ValueError, match="batch_size"):
        ArrayEpochs(x, y, 0)
    with pytest.raises(ValueError, match=r"same positive number.*len\(x\)=4, len\(y\)=3"):
        ArrayEpochs(x, y[:3], 2)
    with pytest.raises(ValueError, match="NumPy arrays"):
        array_batches(x.tolist(), y, 2)
    with pytest.raises(IndexError, match="Received: index=2"):
        ArrayEpochs(x, y, 2)[2]


def test_start_epoch_starts_the_stream_at_that_epoch():
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    y = np.arange(12)
    run = ArrayEpochs(x, y, 5, seed=1)
    run.on_epoch_end()
    run.on_epoch_end()
    later = ArrayEpochs(x, y, 5, seed=1, start_epoch=2)
    assert later.epoch == 2
    np.testing.assert_array_equal(np.concatenate([later[i][1] for i in range(3)]),
                                  np.random.default_rng([1, 2]).permutation(12))
    assert [later[i][1].tolist() for i in range(3)] == [run[i][1].tolist() for i in range(3)]
    with pytest.raises(ValueError, match=r"`start_epoch` must be >= 0. Received: start_epoch=-1"):
        ArrayEpochs(x, y, 5, start_epoch=-1)
