"""Transfer learning: model.weights (dlrun runs, state dicts, ImageNet) and model.freeze, on the real training path."""

import logging
import os
import re
import socket
import urllib.error

import pytest
import torch
from torch import nn

from dlrun.build import build, build_model
from dlrun.errors import UserError
from dlrun.models.transfer import freeze, head_name, load_weights
from dlrun import checkpoint
from tests.conftest import blobs, make_config, refused, train, dlrun_here

MLP_BN = ("model.hidden=[32]", "++model.norm=batch")  # Flatten, Linear, BatchNorm1d, ReLU, Linear (the head: "4")
HEAD = ("4.weight", "4.bias")


def built(*overrides: str) -> nn.Module:
    """The model exactly as `train` builds it before its first step: seeded, initialised, loaded, frozen."""
    cfg, _ = make_config(*overrides)
    torch.manual_seed(cfg.trainer.seed)
    return build_model(cfg, build(cfg.data))


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


def test_fine_tune_a_run_on_new_classes_trains_the_head_and_leaves_the_backbone_bit_identical(
        tmp_path, npz, caplog, capsys):
    train(tmp_path / "src", "trainer.epochs=1", *MLP_BN)  # digits: 1x8x8, 10 classes
    x, y = blobs(240, features=64, classes=3)  # 64 features, as the flattened digits; 3 classes
    path = npz(x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    fine = ("data=arrays", f"data.path={path}", *MLP_BN, f"model.weights={tmp_path / 'src'}",
            "model.freeze=backbone", "optim.lr=0.01", "trainer.epochs=3")
    start = built(*fine)
    with caplog.at_level(logging.INFO, logger="dlrun"):
        summary = train(tmp_path / "fine", *fine)

    source = checkpoint.load(tmp_path / "src/checkpoints/best.pt")["model"]  # a run directory means its best.pt
    last = checkpoint.load(tmp_path / "fine/checkpoints/last.pt")
    after = last["model"]
    assert len(last["optimizer"]["param_groups"][0]["params"]) == len(HEAD)  # the optimizer holds only the head
    initial = start.state_dict()
    assert set(after) == set(source) and "2.running_mean" in source
    for key in set(source) - set(HEAD):
        # Weights, and the frozen BatchNorm's running statistics (kept in eval mode), to the bit.
        assert torch.equal(initial[key], source[key]), key
        assert torch.equal(after[key], source[key]), key
    assert source["4.weight"].shape == (10, 32) and after["4.weight"].shape == (3, 32)
    for key in HEAD:
        assert not torch.equal(after[key], initial[key]), key  # the new head trained
    assert [n for n, p in start.named_parameters() if p.requires_grad] == list(HEAD)
    head_params = sum(p.numel() for p in start[4].parameters())
    assert summary["trainable_params"] == head_params == 3 * 32 + 3
    assert summary["params"] == sum(p.numel() for p in start.parameters()) == 64 * 32 + 32 + 2 * 32 + head_params
    start.train()  # what the Trainer calls every epoch: the frozen norm stays in eval mode, the rest trains
    assert start.training and start[1].training and not start[2].training
    assert "head '4' replaced (10 -> 3 outputs, fresh init)" in caplog.text
    assert f"model MLP ({summary['params']:,} parameters, 99 trainable)" in caplog.text
    assert f"{summary['params']:,} (99 trainable)" in capsys.readouterr().out  # the results table


def test_freeze_by_prefixes_on_dotted_boundaries_and_unknown_prefixes_refused(tmp_path):
    # features.0 conv (4@3x3, 1 channel in), features.2 conv (4@3x3), classifier.1 FC 64->8, classifier.3 FC 8->10.
    cnn = ("model=cnn", "model.channels=[4]", "model.fc=[8]", "trainer.epochs=1")
    overrides = (*cnn, "model.freeze=[features.0,classifier.1]")
    start = built(*overrides)
    summary = train(tmp_path / "run", *overrides)
    trainable = [n for n, p in start.named_parameters() if p.requires_grad]
    assert trainable == ["features.2.weight", "features.2.bias", "classifier.3.weight", "classifier.3.bias"]
    assert summary["trainable_params"] == (4 * 4 * 9 + 4) + (8 * 10 + 10) < summary["params"]
    initial, after = start.state_dict(), checkpoint.load(tmp_path / "run/checkpoints/last.pt")["model"]
    for key in initial:
        assert torch.equal(after[key], initial[key]) == (key not in trainable), key

    # "layer1" freezes layer1, not layer10; a comma-separated string works as a list does.
    model = nn.ModuleDict({"layer1": nn.Linear(2, 2), "layer10": nn.Linear(2, 2), "fc": nn.Linear(2, 2)})
    freeze(model, "layer1")
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["layer1.weight", "layer1.bias"]
    seq = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])
    freeze(seq, " 0, 1 ")
    assert [n for n, p in seq.named_parameters() if not p.requires_grad] == ["0.weight", "0.bias", "1.weight", "1.bias"]

    with pytest.raises(UserError) as err:  # "feature" is not a whole dotted part of "features.0.weight"
        train(tmp_path / "bad", *cnn, "model.freeze=[feature]")
    assert re.search(r"model.freeze: 'feature' matches no parameter of CNN; .*\(e.g. features or features.0\), "
                     r"or backbone; its modules: features, classifier$",
                     one_line(err))
    assert refused(tmp_path / "bad")
    with pytest.raises(UserError, match="freezes every parameter"):
        freeze(nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}), ["a", "b"])


def test_a_plain_state_dict_loads_in_zip_and_legacy_formats_under_a_prefix_and_with_another_head(tmp_path):
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in built("model.hidden=[16]").state_dict().items()}
    files = {"state.pth": state, "legacy.pth": state, "wrapped.pt": {f"module.{k}": v for k, v in state.items()}}
    for name, content in files.items():
        torch.save(content, tmp_path / name, _use_new_zipfile_serialization=name != "legacy.pth")
        model = built("model.hidden=[16]", f"model.weights={tmp_path / name}")
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), name

    # Weights for 5 classes into a 10-class model: everything loads but the head, which keeps its fresh init.
    five = {**state, "3.weight": torch.randn(5, 16), "3.bias": torch.randn(5)}
    torch.save(five, tmp_path / "five.pth")
    fresh = built("model.hidden=[16]").state_dict()
    model = built("model.hidden=[16]", f"model.weights={tmp_path / 'five.pth'}").state_dict()
    assert all(torch.equal(model[k], state[k]) for k in ("1.weight", "1.bias"))
    assert all(torch.equal(model[k], fresh[k]) for k in ("3.weight", "3.bias"))


def test_a_mismatch_outside_the_head_and_missing_or_unexpected_keys_are_refused(tmp_path):
    train(tmp_path / "small", "trainer.epochs=1", "model.hidden=[8]")
    with pytest.raises(UserError) as err:
        train(tmp_path / "big", "trainer.epochs=1", "model.hidden=[16]", f"model.weights={tmp_path / 'small'}")
    message = one_line(err)
    assert ("shape (weights vs model): 1.weight (8, 64) vs (16, 64), 1.bias (8,) vs (16,)); "
            "only the classifier head '3' may differ;") in message
    assert "3.weight" not in message  # the head may differ; it is not what is wrong
    assert "use the same model and data overrides the weights were trained with" in message
    assert message.endswith("(they were trained with model.hidden=[8]; this run has [16])")
    assert refused(tmp_path / "big")

    state = built("model.hidden=[16]").state_dict()
    torch.save({**state, "extra.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    with pytest.raises(UserError, match=r"unexpected: extra.weight\); only the classifier head '3' may differ"):
        built("model.hidden=[16]", f"model.weights={tmp_path / 'extra.pt'}")
    torch.save({k: v for k, v in state.items() if k != "1.bias"}, tmp_path / "short.pt")
    with pytest.raises(UserError, match=r"missing: 1.bias\)"):
        built("model.hidden=[16]", f"model.weights={tmp_path / 'short.pt'}")


class TinyResNet(nn.Module):
    """Stands in for a model built from torchvision's resnet18 builder, without building one."""

    torchvision_name = "resnet18"

    def __init__(self, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.aux1 = None  # dropped, as torchvision's GoogLeNet drops its auxiliary classifiers
        self.fc = nn.Linear(4, classes)


def test_imagenet_weights_refused_without_torchvision_name_offline_and_loaded_with_a_new_head(monkeypatch, tmp_path):
    with pytest.raises(UserError) as err:
        built("model.weights=imagenet")
    assert re.search(r"^model.weights=imagenet: MLP has no ImageNet weights; the models built from "
                     r"torchvision's builders have them \(model=alexnet, .*\); or pass model.weights=PATH",
                     one_line(err))

    offline = (urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")),
               TimeoutError("timed out"), ConnectionResetError(104, "Connection reset by peer"))
    for error in offline:
        def download(url, error=error, **kwargs):
            raise error

        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
        with pytest.raises(UserError) as err:
            load_weights(TinyResNet(3), "imagenet")
        message = one_line(err)
        assert message.startswith("model.weights=imagenet: could not download resnet18's ImageNet weights (")
        assert f"it needs the internet once, to download https://download.pytorch.org/models/resnet18-f37072fd.pth " \
               f"into the torch hub cache {torch.hub.get_dir()}" in message
        assert message.endswith("or download that file elsewhere and pass model.weights=/path/to/resnet18-f37072fd.pth")

    imagenet = TinyResNet(1000).state_dict()
    calls = []

    def cached(url, **kwargs):
        calls.append((url, kwargs))
        return {**imagenet, "aux1.fc.weight": torch.zeros(1)}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", cached)
    model = TinyResNet(3)
    fresh_fc = model.fc.weight.detach().clone()
    load_weights(model, "imagenet")
    assert calls[0][0].endswith("resnet18-f37072fd.pth") and calls[0][1]["weights_only"] is True
    assert torch.equal(model.conv1.weight, imagenet["conv1.weight"])
    assert torch.equal(model.fc.weight, fresh_fc)  # 1000 -> 3 classes: the head keeps its init
    assert head_name(model) == "fc"


def test_corrupt_hostile_foreign_and_missing_weights_files_are_one_line(tmp_path):
    state = built().state_dict()
    torch.save(state, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "cut_legacy.pt").write_bytes((tmp_path / "legacy.pt").read_bytes()[:200])
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "lightning.ckpt")
    marker = tmp_path / "was_run"

    class Payload:  # unpickling this would create a directory: weights_only must refuse it
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"0.weight": Payload()}, tmp_path / "hostile.pt")
    cases = {
        "cut.pt": "is truncated or corrupt",
        "junk.pt": "is truncated or corrupt (not a torch zip archive)",
        "cut_legacy.pt": "is truncated or corrupt",
        "hostile.pt": "holds objects that are not plain weights and was refused, nothing in it was run",
        "lightning.ckpt": "is neither a dlrun checkpoint (a 'model' entry) nor a state dict (names -> tensors); "
                          "it holds: state_dict, epoch",
    }
    for name, expected in cases.items():
        with pytest.raises(UserError) as err:
            built(f"model.weights={tmp_path / name}")
        message = one_line(err)
        assert message.startswith(f"weights file '{tmp_path / name}' ") and expected in message, message
    assert not marker.exists()

    with pytest.raises(UserError) as err:
        built(f"model.weights={tmp_path / 'nope.pt'}")
    assert one_line(err) == (f"model.weights: no checkpoint at '{tmp_path / 'nope.pt'}'; "
                             "pass a run directory, a .pt/.pth file, or imagenet")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no checkpoint at '.*best.pt' or '.*last.pt'"):
        built(f"model.weights={run}")
    checkpoint.save_atomic({"model": state}, run / "checkpoints/last.pt")
    assert checkpoint.resolve(run, names=("best.pt", "last.pt")).name == "last.pt"  # no best.pt: last.pt
    checkpoint.save_atomic({"model": state}, run / "checkpoints/best.pt")
    assert checkpoint.resolve(run, names=("best.pt", "last.pt")).name == "best.pt"


@pytest.mark.slow
def test_cli_missing_weights_is_one_line_exit_2_and_writes_nothing(tmp_path):
    result = dlrun_here("train", f"model.weights={tmp_path / 'nope.pt'}", "model.freeze=backbone", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == [
        f"dlrun train: error: model.weights='{tmp_path / 'nope.pt'}': no such file or directory; "
        "model.weights takes imagenet, null or a dlrun run directory or a .pt/.pth file"], result.stderr
    summaries = list(tmp_path.rglob("summary.json"))
    assert len(summaries) == 1 and refused(summaries[0].parent)
