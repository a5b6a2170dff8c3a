"""Checkpoints survive a write that dies half-way, and a hostile pickle never runs."""

import io

import pytest
import torch

from dlrun.errors import UserError
from dlrun import checkpoint


def test_a_write_that_dies_after_half_its_bytes_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"model": {"w": torch.ones(1000)}, "epoch": 1}, path)
    real_save = torch.save
    written = {}

    def dies_half_way(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])  # half of a real checkpoint reaches the disk...
        written["bytes"] = len(data) // 2
        raise OSError(28, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"model": {"w": torch.zeros(1000)}, "epoch": 2}, path)
    assert written["bytes"] > 1000
    state = checkpoint.load(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the half-written temp file is gone

    # The half-written bytes themselves, had they landed at the real path, are refused in one line.
    monkeypatch.setattr(torch, "save", real_save)
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1000)}}, buffer)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UserError, match="truncated.pt") as error:
        checkpoint.load(truncated)
    assert "\n" not in str(error.value)


class CreatesAFile:
    """Unpickling this would open (and so create) `marker`: code run by loading a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": CreatesAFile(marker)}, hostile)
    assert not marker.exists()
    with pytest.raises(UserError, match="refused") as error:
        checkpoint.load(hostile)
    assert "\n" not in str(error.value) and "hostile.pt" in str(error.value)
    assert not marker.exists()  # weights_only: the payload never ran
