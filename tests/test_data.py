import numpy as np
import pytest
import torch

from dlrun.data.arrays import ArrayData
from dlrun.data.base import standard_shape
from dlrun.data.digits import DigitsData, load_digits_arrays
from dlrun.errors import UserError
from tests.conftest import blobs


def test_digits_reads_the_same_arrays_as_sklearn():
    from sklearn.datasets import load_digits

    x, y = load_digits_arrays()
    ref_x, ref_y = load_digits(return_X_y=True)
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)


def prepared(data, split: str) -> torch.Tensor:
    """A whole split as the model reads it: preprocessed with the training split's statistics."""
    return data.batch(split, slice(None))[0]


def test_digits_split_is_seeded_disjoint_and_normalised_on_train_only():
    data = DigitsData()
    assert data.input_shape == (1, 8, 8) and data.num_outputs == 10 and data.task == "classification"
    sizes = [len(data.train), len(data.val), len(data.test)]
    assert sum(sizes) == 1797 and sizes == [1294, 144, 359]
    # Per-channel statistics come from the training split: there mean 0 and std 1 exactly.
    train, test = prepared(data, "train"), prepared(data, "test")
    assert abs(train.mean().item()) < 1e-5
    assert abs(train.std(unbiased=False).item() - 1.0) < 1e-4
    assert abs(test.mean().item()) > 1e-4  # test is scaled with train's numbers, not its own
    # The same split seed gives the same test set; another seed a different one.
    assert torch.equal(DigitsData().test.x, data.test.x)
    assert not torch.equal(DigitsData(split_seed=1).test.x, data.test.x)
    # No sample is in two splits.
    rows = lambda s: {tuple(r) for r in s.x.flatten(1).tolist()}  # noqa: E731
    assert not rows(data.train) & rows(data.test)


@pytest.mark.parametrize("shape,layout,canonical,resolved", [
    ((5, 7), "auto", (5, 7), "features"),
    ((5, 7), "signal", (5, 1, 7), "signal"),
    ((5, 2, 7), "signal", (5, 2, 7), "signal"),
    ((5, 6, 6), "image", (5, 1, 6, 6), "image"),
    ((5, 3, 6, 6), "auto", (5, 3, 6, 6), "image"),
    ((5, 4, 3), "sequence", (5, 4, 3), "sequence"),
])
def test_layouts_bring_x_to_canonical_shape(shape, layout, canonical, resolved):
    x, got = standard_shape(np.zeros(shape), layout)
    assert x.shape == canonical and got == resolved


def test_rank3_without_layout_is_refused_with_the_fix():
    with pytest.raises(UserError, match="data.layout=image"):
        standard_shape(np.zeros((5, 4, 3)), "auto")


def test_npz_classification_with_held_out_validation(npz):
    x, y = blobs(100)
    xt, yt = blobs(30, seed=1)
    data = ArrayData(str(npz(x_train=x, y_train=y, x_test=xt, y_test=yt)), val_fraction=0.2)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 30)
    assert data.task == "classification" and data.num_outputs == 3 and data.input_shape == (6,)
    # Per-feature standardisation from train.
    train = prepared(data, "train")
    np.testing.assert_allclose(train.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0, unbiased=False).numpy(), 1, atol=1e-4)


def test_npz_float_targets_mean_regression_and_explicit_val_is_used(npz):
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=(n, 4, 5)).astype(np.float32) for k, n in (("x_train", 40), ("x_val", 10), ("x_test", 12))}
    arrays.update(y_train=rng.normal(size=40), y_val=rng.normal(size=10), y_test=rng.normal(size=12))
    data = ArrayData(str(npz(**arrays)), layout="sequence")
    assert data.task == "regression" and data.num_outputs == 1
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 12)
    assert data.train.y.shape == (40, 1) and data.train.y.dtype == torch.float32


def test_npz_errors_name_the_problem(npz, tmp_path):
    x, y = blobs(20)
    with pytest.raises(UserError, match="no file .*missing.npz.*data.path="):
        ArrayData(str(tmp_path / "missing.npz"))
    with pytest.raises(UserError, match="has no x_train"):
        ArrayData(str(npz(y_train=y, x_test=x, y_test=y)))
    with pytest.raises(UserError, match="x_train has 20 samples but y_train has 19"):
        ArrayData(str(npz(x_train=x, y_train=y[:19], x_test=x, y_test=y)))
    with pytest.raises(UserError, match="x_test has 20 samples but y_test has 5"):
        ArrayData(str(npz(x_train=x, y_train=y, x_test=x, y_test=y[:5])))
    with pytest.raises(UserError, match="negative labels"):
        ArrayData(str(npz(x_train=x, y_train=y - 1, x_test=x, y_test=y)))
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="not a readable .npz"):
        ArrayData(str(corrupt))


def test_npz_with_pickled_objects_is_refused_without_unpickling(npz):
    x, y = blobs(20)
    objects = np.array([{"a": 1}] * 20, dtype=object)
    with pytest.raises(UserError, match="without pickle"):
        ArrayData(str(npz(x_train=objects, y_train=y, x_test=x, y_test=y)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batches_gathered_in_pinned_host_memory_reach_the_gpu_intact():
    """data.on_device=false on a GPU: the split stays in pinned host memory; each shuffled batch is
    gathered, pinned and copied asynchronously (Split.take), and arrives as stored."""
    from dlrun.data.base import Split

    x = torch.randint(0, 256, (100, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (100,))
    split = Split(x.clone(), y.clone())
    split.place(torch.device("cuda"), on_device=False)
    assert split.x.is_pinned() and not split.x.is_cuda
    order = torch.randperm(100)
    for (bx, by), index in zip(split.batches(32, order), order.split(32)):
        assert bx.is_cuda and torch.equal(bx.cpu(), x[index]) and torch.equal(by.cpu(), y[index])
