"""The real datasets, loaded from tiny files in their real on-disk formats through the real code paths:
MNIST's IDX ubyte files, CIFAR-10/100's pickled batches, SVHN's .mat, an image folder of PNGs."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrun.data.folder import ImageFolderData
from dlrun.data.vision import CIFAR10, CIFAR100, MNIST, SVHN, FashionMNIST
from dlrun.errors import UserError


# ----------------------------------------------------------------------------- format writers
def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format: a big-endian magic (0, 0, type 0x08 = ubyte, rank), the dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_files(root: Path, folder: str, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": np.arange(n_train) % 10,
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": (np.arange(n_test) * 3) % 10}
    raw = root / folder / "raw"
    write_idx(raw / "train-images-idx3-ubyte", arrays["train_x"])
    write_idx(raw / "train-labels-idx1-ubyte", arrays["train_y"])
    write_idx(raw / "t10k-images-idx3-ubyte", arrays["test_x"])
    write_idx(raw / "t10k-labels-idx1-ubyte", arrays["test_y"])
    return arrays


def cifar_files(root: Path, classes: int, per_batch: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR's python format: pickled dicts of a (N, 3072) uint8 "data" (R, G, B planes) and labels."""
    rng = np.random.default_rng(seed)
    if classes == 10:
        folder, key, batches = root / "cifar-10-batches-py", "labels", [f"data_batch_{i}" for i in range(1, 6)]
        meta_file, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
        test_file = "test_batch"
    else:
        folder, key, batches = root / "cifar-100-python", "fine_labels", ["train"]
        meta_file, meta = "meta", {"fine_label_names": [f"f{i}" for i in range(100)]}
        test_file = "test"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in batches:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = list(rng.integers(0, classes, per_batch))
        y[0] = classes - 1  # every class count is known: the highest label is there
        (folder / name).write_bytes(pickle.dumps({"data": x, key: y}))
        xs.append(x), ys.extend(y)
    test_x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = list(rng.integers(0, classes, n_test))
    (folder / test_file).write_bytes(pickle.dumps({"data": test_x, key: test_y}))
    (folder / meta_file).write_bytes(pickle.dumps(meta))
    return {"train_x": np.concatenate(xs).reshape(-1, 3, 32, 32), "train_y": np.array(ys),
            "test_x": test_x.reshape(-1, 3, 32, 32), "test_y": np.array(test_y)}


def svhn_files(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """SVHN's cropped digits: .mat files of X (32, 32, 3, N) uint8 and y (N, 1), with 10 for the digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    folder = root / "svhn"
    folder.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        digits = np.arange(n) % 10
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": np.where(digits == 0, 10, digits)[:, None]})
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x.transpose(3, 2, 0, 1), digits
    return arrays


def image_folder(root: Path, splits: dict[str, int], classes=("cat", "dog", "owl"), size=(12, 10)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in splits.items():
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                pixels[..., 0] = 80 * c  # the red channel says the class
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("cls, folder", [(MNIST, "MNIST"), (FashionMNIST, "FashionMNIST")])
def test_mnist_idx_files_load_with_their_shapes_labels_and_held_out_validation(tmp_path, cls, folder):
    arrays = mnist_files(tmp_path, folder, n_train=50, n_test=20)
    data = cls(root=str(tmp_path), val_fraction=0.2, preprocess="none")
    assert data.input_shape == (1, 28, 28) and data.layout == "image"
    assert data.num_outputs == 10 and data.task == "classification"
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [40, 10, 20]
    assert data.train.x.dtype == torch.uint8  # stored as pixels, a quarter of float32
    assert torch.equal(data.test.x[:, 0], torch.as_tensor(arrays["test_x"], dtype=torch.uint8))
    assert torch.equal(data.test.y, torch.as_tensor(arrays["test_y"]))
    # train + val are the training file, split without loss or overlap
    both = torch.cat([data.train.x, data.val.x]).flatten(1)
    expected = torch.as_tensor(arrays["train_x"], dtype=torch.uint8).flatten(1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, expected.tolist()))
    x, _ = data.batch("test", slice(0, 4))
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0  # preprocess=none: pixels / 255
    np.testing.assert_allclose(x[:, 0].numpy(), arrays["test_x"][:4] / 255, atol=1e-6)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_pickle_batches_load_as_nchw_uint8_with_every_class(tmp_path, classes):
    arrays = cifar_files(tmp_path, classes, per_batch=8 if classes == 10 else 30, n_test=12)
    cls = CIFAR10 if classes == 10 else CIFAR100
    data = cls(root=str(tmp_path), val_fraction=0.25)
    n_train = len(arrays["train_y"])
    assert data.input_shape == (3, 32, 32) and data.num_outputs == classes
    assert len(data.train) + len(data.val) == n_train and len(data.test) == 12
    assert data.classes[:2] == (["c0", "c1"] if classes == 10 else ["f0", "f1"])
    assert torch.equal(data.test.x, torch.as_tensor(arrays["test_x"]))  # NCHW: R, G, B planes as written
    assert torch.equal(data.test.y, torch.as_tensor(arrays["test_y"]))
    counts = torch.bincount(torch.cat([data.train.y, data.val.y]), minlength=classes)
    assert torch.equal(counts, torch.bincount(torch.as_tensor(arrays["train_y"]), minlength=classes))


def test_svhn_mat_files_load_with_label_10_as_digit_0(tmp_path):
    arrays = svhn_files(tmp_path, n_train=30, n_test=10)
    data = SVHN(root=str(tmp_path), val_fraction=0.1)
    assert data.input_shape == (3, 32, 32) and data.num_outputs == 10
    assert torch.equal(data.test.y, torch.as_tensor(arrays["test_y"]))
    assert int(data.test.y.min()) == 0 and int(data.test.y.max()) == 9
    assert torch.equal(data.test.x, torch.as_tensor(arrays["test_x"]))


@pytest.mark.parametrize("cls, option, names", [
    (MNIST, "mnist", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    (CIFAR10, "cifar10", "cifar-10-batches-py/data_batch_1"),
    (CIFAR100, "cifar100", "cifar-100-python/train"),
    (SVHN, "svhn", "svhn/train_32x32.mat"),
])
def test_a_missing_dataset_is_one_line_naming_the_files_the_folder_and_the_fetch_command(tmp_path, cls, option, names):
    with pytest.raises(UserError) as caught:
        cls(root=str(tmp_path / "empty"))
    message = str(caught.value)
    assert "\n" not in message
    assert names in message and str(tmp_path / "empty") in message
    assert f"dlrun train data={option} data.download=true" in message


def test_download_when_offline_is_one_line(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(UserError, match=r"^data.download=true: could not download CIFAR-10 .*name resolution"):
        CIFAR10(root=str(tmp_path), download=True)


@pytest.mark.parametrize("on_device", ["true", "false"])
def test_an_image_folder_of_pngs_loads_decoded_or_streamed_with_the_same_batches(tmp_path, on_device):
    image_folder(tmp_path, {"train": 6, "test": 2})
    data = ImageFolderData(root=str(tmp_path), image_size=8, workers=0, val_fraction=0.5, on_device=on_device)
    assert data.classes == ["cat", "dog", "owl"] and data.num_outputs == 3
    assert data.input_shape == (3, 8, 8)
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [9, 9, 6]
    assert torch.equal(torch.bincount(data.test.y), torch.tensor([2, 2, 2]))
    batches = list(data.test.batches(4))
    assert [len(y) for _, y in batches] == [4, 2]
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 8, 8)
    # the red channel was written as 80 * class; resizing keeps a constant plane constant
    assert torch.equal(x[:, 0, 0, 0], (80 * torch.cat([y for _, y in batches])).to(torch.uint8))
    streamed = on_device == "false"
    assert (type(data.test).__name__ == "Images") == streamed


def test_image_folder_decoded_and_streamed_give_equal_tensors_and_statistics(tmp_path):
    image_folder(tmp_path, {"train": 5, "val": 2, "test": 2})
    decoded = ImageFolderData(root=str(tmp_path), image_size=6, workers=0, on_device="true")
    streamed = ImageFolderData(root=str(tmp_path), image_size=6, workers=0, on_device="false")
    order = torch.randperm(len(decoded.train), generator=torch.Generator().manual_seed(0))
    for (a, ya), (b, yb) in zip(decoded.train.batches(4, order, start=1), streamed.train.batches(4, order, start=1)):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    for key in ("mean", "std"):
        torch.testing.assert_close(decoded.preprocess.stats[key], streamed.preprocess.stats[key])
    assert len(decoded.val) == 6  # val/ given: no holdout


def test_image_folder_mistakes_are_one_line(tmp_path):
    with pytest.raises(UserError, match="has no train/ folder"):
        ImageFolderData(root=str(tmp_path))
    image_folder(tmp_path, {"train": 1}, classes=("a", "b"))
    image_folder(tmp_path, {"test": 1}, classes=("a", "c"))
    with pytest.raises(UserError, match="every split needs the same class folders"):
        ImageFolderData(root=str(tmp_path))


def test_data_cifar10_trains_end_to_end_from_dlrun_data_with_augmentation_and_tta(tmp_path, monkeypatch):
    from tests.conftest import train

    cifar_files(tmp_path / "data", 10, per_batch=20, n_test=16)
    monkeypatch.setenv("DLRUN_DATA", str(tmp_path / "data"))  # data.root's default
    summary = train(tmp_path / "run", "data=cifar10", "model=cnn", "augment=standard", "augment.jitter=0.2",
                    "eval.tta=flip", "trainer.max_steps=3", "trainer.device=cpu", "data.batch_size=16")
    assert summary["status"] == "finished" and summary["steps"] == 3
    assert summary["hparams"]["augment.crop_padding"] == 4 and summary["hparams"]["data.preprocess"] == "channel_standardize"
    assert 0.0 <= summary["test"]["acc"] <= 1.0
    # the training statistics were cached beside the data
    assert len(list((tmp_path / "data" / "cifar-10-batches-py").glob(".dlrun-stats-channel_standardize-*.pt"))) == 1


def test_svhn_download_fetches_the_test_file_too(tmp_path, monkeypatch):
    import torchvision

    arrays = svhn_files(tmp_path / "written", n_train=10, n_test=5)
    fetched = []

    def download(self):  # "downloads" by copying the file written above
        fetched.append(self.split)
        (Path(self.root)).mkdir(parents=True, exist_ok=True)
        (Path(self.root) / self.filename).write_bytes((tmp_path / "written" / "svhn" / self.filename).read_bytes())

    monkeypatch.setattr(torchvision.datasets.SVHN, "download", download)
    data = SVHN(root=str(tmp_path / "fresh"), download=True)
    assert fetched == ["train", "test"]
    assert torch.equal(data.test.y, torch.as_tensor(arrays["test_y"]))
