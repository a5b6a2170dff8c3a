"""Issue 19, items 2 and 8: a dataset file is data, never code, and arrays are checked before training.

A crafted file's payload touches a marker file; each test asserts the marker is absent (and, once,
that the same payload does touch it under a plain pickle.load: the payload is live)."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision

from dlrun.data.arrays import ArrayData
from dlrun.data.vision import CIFAR10, CIFAR100, MNIST, SVHN
from dlrun.errors import UserError
from tests.conftest import blobs, dlrun_here
from tests.test_vision_data import cifar_files, mnist_files, svhn_files


class Touch:
    """Unpickling this calls exec, which creates `marker`: what a hostile dataset file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message, message
    return message


# ------------------------------------------------------------------------------ item 2: CIFAR pickles
@pytest.mark.slow
def test_a_cifar_batch_whose_pickle_runs_code_is_refused_in_one_line_by_the_cli_and_runs_nothing(tmp_path):
    cifar_files(tmp_path / "data", 10, per_batch=4, n_test=4)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": Touch(marker), "labels": [0, 1, 2, 3]})
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").write_bytes(evil)
    pickle.loads(evil)  # the payload is live: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()
    result = dlrun_here("train", "data=cifar10", f"data.root={tmp_path / 'data'}", "trainer.max_steps=1",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert not marker.exists()
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1, result.stderr
    assert err[0].startswith("dlrun train: error: data=cifar10: ") and "data_batch_1" in err[0]
    assert "builtins.exec" in err[0] and "nothing was run" in err[0] and "data.download=true" in err[0]


@pytest.mark.parametrize("where", ["nested in the labels", "the meta file", "the test batch", "cifar100's train"])
def test_code_anywhere_in_any_cifar_file_is_refused_before_it_runs(tmp_path, where):
    classes = 100 if where == "cifar100's train" else 10
    cifar_files(tmp_path, classes, per_batch=30 if classes == 100 else 4, n_test=4)
    marker = tmp_path / "pwned"
    folder = tmp_path / ("cifar-100-python" if classes == 100 else "cifar-10-batches-py")
    x = np.zeros((4, 3072), np.uint8)
    if where == "nested in the labels":
        path, payload = folder / "data_batch_3", {"data": x, "labels": [0, 1, [2, {"k": Touch(marker)}], 3]}
    elif where == "the meta file":
        path, payload = folder / "batches.meta", {"label_names": [f"c{i}" for i in range(9)] + [Touch(marker)]}
    elif where == "the test batch":
        path, payload = folder / "test_batch", {"data": x, "labels": Touch(marker)}
    else:
        path, payload = folder / "train", {"data": x, "fine_labels": [0, 1, 2, Touch(marker)]}
    path.write_bytes(pickle.dumps(payload, protocol=2))  # Python 2's protocol, as the published files
    try:
        (CIFAR100 if classes == 100 else CIFAR10)(root=str(tmp_path))
        raised = None
    except Exception as exc:
        raised = exc
    assert not marker.exists()  # first: whatever else happened, the payload never ran
    assert isinstance(raised, UserError), repr(raised)
    message = str(raised)
    assert "\n" not in message
    # Python 2's protocol names the module __builtin__: the name is shown as the file has it
    assert str(path) in message and "builtin__.exec" in message and "nothing was run" in message


@pytest.mark.parametrize("content, says", [
    (b"\x80\x04\x95", "not a readable pickle"),                               # cut short
    (pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
    (pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}), "(N, 3072) uint8"),
    (pickle.dumps({"data": np.zeros((4, 3072), np.float32), "labels": [0] * 4}), "(N, 3072) uint8"),
    (pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1]}), "list of 4 integer labels"),
    (pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": ["a"] * 4}), "list of 4 integer labels"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 2**70]}), "list of 2 integer labels"),
])
def test_a_cifar_batch_that_is_not_one_is_one_line_naming_the_file(tmp_path, content, says):
    cifar_files(tmp_path, 10, per_batch=4, n_test=4)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(content)
    with pytest.raises(UserError) as caught:
        CIFAR10(root=str(tmp_path))
    message = one_line(caught)
    assert "data_batch_2" in message and says in message and "data.download=true" in message


def test_a_cifar_batch_as_big_as_the_published_one_must_have_its_md5(tmp_path, monkeypatch):
    """10,000 images claim to be the published data_batch_1: torchvision's md5 for it decides.
    Smaller files (every other test's) have no published checksum and are read as data."""
    cifar_files(tmp_path, 10, per_batch=4, n_test=4)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    rng = np.random.default_rng(0)
    path.write_bytes(pickle.dumps({"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
                                   "labels": list(rng.integers(0, 10, 10_000))}))
    with pytest.raises(UserError) as caught:
        CIFAR10(root=str(tmp_path))
    message = one_line(caught)
    assert str(path) in message and "c99cafc152244af753f735de768cd75f" in message and "data.download=true" in message
    # the same file, with its md5 in torchvision's list, is the published one and loads
    import hashlib

    listed = [[name, hashlib.md5(path.read_bytes()).hexdigest() if name == "data_batch_1" else md5]
              for name, md5 in torchvision.datasets.CIFAR10.train_list]
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", listed)
    data = CIFAR10(root=str(tmp_path), val_fraction=0.1, preprocess="none")
    assert len(data.train) + len(data.val) == 10_000 + 4 * 4


def python2_batch(x: np.ndarray, labels: list[int]) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) wrote for the published batches: str (not unicode)
    keys and pixels, numpy's old module path numpy.core.multiarray, a dtype of ('u1', 0, 1)."""
    def text(b: bytes) -> bytes:  # SHORT_BINSTRING or BINSTRING: a Python 2 str
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def num(n: int) -> bytes:  # BININT1 or BININT2
        return b"K" + bytes([n]) if n < 256 else b"M" + struct.pack("<H", n)

    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + num(0) + b"\x85" + text(b"b") + b"\x87R("
             + num(1) + num(x.shape[0]) + num(x.shape[1]) + b"\x86cnumpy\ndtype\n" + text(b"u1") + num(0) + num(1)
             + b"\x87R(" + num(3) + text(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + num(0) + b"tb\x89"
             + text(x.tobytes()) + b"tb")
    return (b"\x80\x02}(" + text(b"data") + array + text(b"labels") + b"](" + b"".join(map(num, labels)) + b"e"
            + text(b"batch_label") + text(b"training batch 1 of 5") + b"u.")


def test_cifar_pickles_of_every_protocol_load_as_the_same_arrays(tmp_path):
    """The restricted unpickler reads what Python 2 wrote (the published files) and what Python 3
    writes (protocol 2's _codecs.encode for bytes, numpy._core's names, protocol 5's _frombuffer)."""
    arrays = cifar_files(tmp_path, 10, per_batch=4, n_test=6)
    reference = CIFAR10(root=str(tmp_path), preprocess="none")
    folder = tmp_path / "cifar-10-batches-py"
    entries = {name: pickle.loads((folder / name).read_bytes()) for name in ("data_batch_1", "test_batch")}
    for protocol in ("python 2", 2, 4, 5):
        for name, entry in entries.items():
            if protocol == "python 2":
                written = python2_batch(entry["data"], [int(v) for v in entry["labels"]])
            else:
                written = pickle.dumps(entry, protocol=protocol)
            (folder / name).write_bytes(written)
        data = CIFAR10(root=str(tmp_path), preprocess="none")
        assert torch.equal(data.test.x, torch.as_tensor(arrays["test_x"])), protocol
        assert torch.equal(data.train.x, reference.train.x) and torch.equal(data.test.y, reference.test.y)


def test_cifar_labels_beyond_the_named_classes_are_one_line(tmp_path):
    cifar_files(tmp_path, 10, per_batch=4, n_test=4)
    x = np.zeros((2, 3072), np.uint8)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": x, "labels": [3, 12]}))
    with pytest.raises(UserError) as caught:
        CIFAR10(root=str(tmp_path))
    assert one_line(caught).startswith("y_test holds label 12 but cifar10 has 10 classes (0..9)")


# ----------------------------------------------------------------- item 2: the other readers' files
def test_an_mnist_file_that_is_not_idx_is_one_line(tmp_path):
    mnist_files(tmp_path, "MNIST", n_train=10, n_test=5)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x07" + bytes(40))
    with pytest.raises(UserError) as caught:
        MNIST(root=str(tmp_path))
    message = one_line(caught)
    assert "t10k-images-idx3-ubyte" in message and "not MNIST's format" in message


def test_an_svhn_file_as_big_as_the_published_one_must_have_its_md5(tmp_path, monkeypatch):
    """The published count (73,257) made small, so that the test writes a small .mat file."""
    svhn_files(tmp_path, n_train=30, n_test=10)
    monkeypatch.setattr(SVHN, "published", {"train": 30, "test": 26_032})
    with pytest.raises(UserError) as caught:
        SVHN(root=str(tmp_path))
    message = one_line(caught)
    assert "train_32x32.mat" in message and torchvision.datasets.SVHN.split_list["train"][2] in message
    (tmp_path / "svhn" / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, but not really")
    monkeypatch.undo()
    with pytest.raises(UserError) as caught:
        SVHN(root=str(tmp_path))
    assert "train_32x32.mat" in one_line(caught)


# ------------------------------------------------------------------------------- item 8: arrays
def arrays(npz, **changes) -> str:
    x, y = blobs(40)
    xt, yt = blobs(12, seed=1)
    given = {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt, **changes}
    return str(npz(**{k: v for k, v in given.items() if v is not None}))


def refused(path: str) -> str:
    with pytest.raises(UserError) as caught:
        ArrayData(path, val_fraction=0.25)
    return one_line(caught)


def test_a_test_label_outside_the_training_classes_is_one_line(npz):
    yt = blobs(12, seed=1)[1]
    yt[5] = 99
    assert refused(arrays(npz, y_test=yt)).startswith("y_test holds label 99 but y_train's classes are 0..2")
    # the classes are y_train's as given: its only sample of class 2 held out for val is not an error
    from dlrun.data.base import holdout

    x, y = blobs(40)
    y[:] = 0
    y[holdout(np.arange(40), y, 0.5, 0)[1][0][0]] = 2  # a sample the split holds out
    data = ArrayData(arrays(npz, x_train=x, y_train=y, y_test=np.zeros(12, int)), val_fraction=0.5)
    assert data.num_outputs == 3 and int(data.val.y.max()) == 2 and int(data.train.y.max()) == 0


def test_float_targets_beside_integer_labels_are_refused_not_made_a_regression(npz):
    message = refused(arrays(npz, y_test=blobs(12, seed=1)[1].astype(np.float64)))
    assert message.startswith("y_test is float64 but y_train is int64") and "astype" in message


@pytest.mark.parametrize("split, bad", [("x_test", np.inf), ("x_train", np.nan), ("x_val", -np.inf)])
def test_non_finite_inputs_are_one_line_naming_the_split_and_the_count(npz, split, bad):
    x = blobs(40 if split == "x_train" else 12, seed=int(split == "x_test"))[0]
    x[3, :2], x[9, 5] = bad, bad
    extra = {"x_val": blobs(12)[0], "y_val": blobs(12)[1]} if split == "x_val" else {}
    extra[split] = x
    message = refused(arrays(npz, **extra))
    # x_train's bad rows may land in the held-out val: still named x_train, as in the file
    assert message.startswith(f"{split} holds 3 non-finite values (inf or nan)") and "nan_to_num" in message


def test_non_finite_regression_targets_are_one_line(npz):
    y = np.linspace(0, 1, 40)
    y[4] = np.nan
    assert refused(arrays(npz, y_train=y, y_test=np.zeros(12))).startswith("y_train holds 1 non-finite value")


@pytest.mark.parametrize("changes, says", [
    ({"y_train": np.where(np.arange(40) % 3 == 2, 2**40, np.arange(40) % 3)},
     "y_train holds label 1099511627776, which would make 1,099,511,627,777 classes"),
    ({"x_train": np.float32(3.0)}, "x_train is a single number, not an array with one row per sample"),
    ({"y_test": np.int64(1)}, "y_test is a single number"),
    ({"x_test": np.zeros((12, 6), np.longdouble)}, "float128, which torch cannot hold"),
])
def test_huge_labels_scalars_and_dtypes_torch_lacks_are_one_line(npz, changes, says):
    assert says in refused(arrays(npz, **changes))


@pytest.mark.slow
def test_the_cli_says_a_scalar_x_train_in_one_line(tmp_path, npz):
    """Before, two lines: Hydra's "Error executing job" and an instantiate error (TypeError: len() of
    unsized object). In-process tests above cover the other arrays; this one is the CLI's word."""
    x, y = blobs(40)
    path = npz(x_train=np.float32(3.0), y_train=y, x_test=x, y_test=y)
    result = dlrun_here("train", "data=arrays", f"data.path={path}", "trainer.max_steps=1",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1, result.stderr
    assert err[0].startswith("dlrun train: error: x_train is a single number")
    assert not list((tmp_path / "run").rglob("*.pt"))


# ------------------------------------------------- the preprocessing cache beside a shared dataset
def test_a_planted_preprocessing_cache_with_nan_or_other_shapes_is_recomputed_not_used(tmp_path):
    cifar_files(tmp_path, 10, per_batch=4, n_test=4)
    honest = CIFAR10(root=str(tmp_path)).preprocess.stats
    (cache,) = (tmp_path / "cifar-10-batches-py").glob(".dlrun-stats-channel_standardize-*.pt")
    for planted in ({"mean": torch.full((1, 3, 1, 1), float("nan")), "std": torch.ones(1, 3, 1, 1)},
                    {"mean": torch.zeros(1, 3, 32, 32), "std": torch.ones(1, 3, 32, 32)},
                    {"mean": torch.zeros(1, 3, 1, 1)}):
        torch.save(planted, cache)
        stats = CIFAR10(root=str(tmp_path)).preprocess.stats
        assert all(torch.equal(stats[k], honest[k]) for k in ("mean", "std"))


def test_the_preprocessing_cache_is_not_written_through_a_symlink_at_its_temp_name(tmp_path, monkeypatch):
    import os

    cifar_files(tmp_path, 10, per_batch=4, n_test=4)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    monkeypatch.setattr(os, "getpid", lambda: 4242)  # the temp name's PID, as a neighbour could guess it
    from dlrun.data.preprocess import cache_path

    train_x = CIFAR10(root=str(tmp_path), preprocess="none").train.x  # the split names the cache file
    folder = tmp_path / "cifar-10-batches-py"
    cache = cache_path(folder, "channel_standardize", train_x)
    cache.with_name(f"{cache.name}.4242.tmp").symlink_to(victim)
    CIFAR10(root=str(tmp_path))
    assert victim.read_bytes() == b"precious" and cache.is_file() and not cache.is_symlink()
