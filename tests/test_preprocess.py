"""data.preprocess: statistics of the training split only, equal to numpy's, applied to every split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlrun.data import preprocess as pre
from dlrun.data.arrays import ArrayData
from dlrun.data.base import Data


def images(seed: int, n: int, dtype=np.uint8) -> np.ndarray:
    """(n, 3, 5, 4) images whose channels have different means and spreads."""
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=[[[100]], [[150]], [[40]]], scale=[[[30]], [[10]], [[20]]], size=(n, 3, 5, 4))
    return np.clip(x, 0, 255).astype(dtype)


def make(method: str, train_x: np.ndarray, val_x: np.ndarray, test_x: np.ndarray, **kw) -> Data:
    labels = lambda x: np.arange(len(x)) % 3  # noqa: E731
    return Data((train_x, labels(train_x)), (val_x, labels(val_x)), (test_x, labels(test_x)), layout="image",
                batch_size=8, eval_batch_size=64, name="synthetic", preprocess=method, **kw)


def prepared(data: Data, split: str) -> np.ndarray:
    return data.batch(split, slice(None))[0].double().numpy()


@pytest.mark.parametrize("dtype, unit", [(np.uint8, 1 / 255), (np.float32, 1.0)])
def test_channel_standardize_uses_numpys_statistics_of_the_training_split_for_every_split(dtype, unit):
    train, val, test = images(0, 300, dtype), images(1, 40, dtype), images(2, 50, dtype)
    data = make("channel_standardize", train, val, test)
    x = train.astype(np.float64) * unit
    mean, std = x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(data.preprocess.stats["mean"].double().numpy(), mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data.preprocess.stats["std"].double().numpy(), std, rtol=1e-6, atol=1e-6)
    # In float64 (before the float32 copy that is applied) the statistics equal numpy's far closer.
    exact = pre.statistics("channel_standardize", torch.from_numpy(train), "image", unit if dtype == np.uint8 else None)
    np.testing.assert_allclose(exact["mean"].numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(exact["std"].numpy(), std, rtol=1e-10)
    for split, raw in (("train", train), ("val", val), ("test", test)):
        expected = (raw.astype(np.float64) * unit - mean) / std  # the TRAINING statistics, for val and test too
        np.testing.assert_allclose(prepared(data, split), expected, rtol=1e-5, atol=1e-5)
    assert abs(prepared(data, "val").mean()) > 1e-3  # val is not standardised with its own statistics


def test_mean_image_and_channel_mean_subtract_the_training_means():
    train, val = images(0, 200), images(1, 30)
    x = train.astype(np.float64) / 255
    data = make("mean_image", train, val, val)
    np.testing.assert_allclose(prepared(data, "val"), val / 255 - x.mean(axis=0, keepdims=True), atol=1e-6)
    data = make("channel_mean", train, val, val)
    np.testing.assert_allclose(prepared(data, "val"), val / 255 - x.mean(axis=(0, 2, 3), keepdims=True), atol=1e-6)
    data = make("none", train, val, val)
    np.testing.assert_allclose(prepared(data, "val"), val / 255, atol=1e-7)


def test_pca_whitening_decorrelates_the_training_data_to_unit_variance():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))  # correlated features with very different variances
    train = rng.normal(size=(4000, 6)) @ mixing + 5.0
    val = rng.normal(size=(500, 6)) @ mixing + 5.0
    labels = lambda x: np.arange(len(x)) % 2  # noqa: E731
    data = Data((train.astype(np.float32), labels(train)), (val.astype(np.float32), labels(val)),
                (val.astype(np.float32), labels(val)), layout="features", batch_size=8, eval_batch_size=512,
                name="correlated", preprocess="pca_whiten")
    white = prepared(data, "train")
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(6), atol=1e-3)
    # the first coordinate is the direction of most variance: numpy's top eigenvector, up to sign
    _, vectors = np.linalg.eigh(np.cov(train, rowvar=False, bias=True))
    top = (train - train.mean(0)) @ vectors[:, -1]
    assert abs(np.corrcoef(white[:, 0], top)[0, 1]) > 0.9999
    # val, whitened with train's rotation, is close to but not exactly white
    assert np.abs(np.cov(prepared(data, "val"), rowvar=False) - np.eye(6)).max() > 1e-3


def test_pca_whitening_of_images_gives_flat_features():
    data = make("pca_whiten", images(0, 200).astype(np.float32), images(1, 20).astype(np.float32),
                images(2, 20).astype(np.float32))
    assert data.layout == "features" and data.input_shape == (60,)
    assert data.batch("test", slice(0, 4))[0].shape == (4, 60)


def test_statistics_are_cached_beside_the_data_and_keyed_by_the_training_split(npz, monkeypatch):
    x = images(0, 120).astype(np.float32).reshape(120, -1)
    y = np.arange(120) % 3
    path = npz(x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    first = ArrayData(str(path), preprocess="pca_whiten")
    cached = list(path.parent.glob(".dlrun-stats-pca_whiten-*.pt"))
    assert len(cached) == 1

    def no_recompute(*args, **kwargs):
        raise AssertionError("statistics recomputed although cached")

    monkeypatch.setattr(pre, "statistics", no_recompute)
    again = ArrayData(str(path), preprocess="pca_whiten")
    assert torch.equal(again.preprocess.stats["whiten"], first.preprocess.stats["whiten"])
    with pytest.raises(AssertionError, match="recomputed"):  # another split seed: another training set
        ArrayData(str(path), preprocess="pca_whiten", split_seed=1)
    monkeypatch.undo()
    cached[0].write_bytes(b"damaged")  # a damaged cache is recomputed, never trusted
    healed = ArrayData(str(path), preprocess="pca_whiten")
    torch.testing.assert_close(healed.preprocess.stats["whiten"], first.preprocess.stats["whiten"])
