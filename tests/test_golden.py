"""The renovation keeps the numbers: each golden run (tests/golden.py) ends as recorded, to the bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import golden

RECORDED = json.loads(golden.GOLDEN.read_text())


@pytest.mark.skipif(golden.machine() != RECORDED["machine"],
                    reason=f"golden.json was recorded with {RECORDED['machine']}: other kernels round otherwise")
@pytest.mark.parametrize("name", golden.NAMES)
def test_a_golden_run_ends_with_the_recorded_numbers_and_weights(name, tmp_path):
    got, want = golden.run(name, tmp_path), RECORDED["runs"][name]
    assert got["weights"] == want["weights"]
    assert got["numbers"] == want["numbers"]


def test_the_golden_runs_span_what_the_renovation_touches():
    """The acceptance's list: at least 12 runs over mlp, cnn, lenet, resnet and lstm; sgd, nesterov,
    adam and lbfgs; every schedule and every regularizer in configs/; EMA, micro-batches, mixup, a
    stop and resume and a 2-process DDP run."""
    from dlrun.paths import CONFIG_DIR

    text = " ".join(" ".join(overrides) for overrides in golden.RUNS.values())
    assert len(golden.NAMES) >= 12 and set(RECORDED["runs"]) == set(golden.NAMES)
    for model in ("cnn", "lenet", "resnet", "lstm"):
        assert f"model={model}" in text
    for group in ("sched", "reg"):
        names = {p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")} - {"none"}
        used = {word.split("=", 1)[1] for word in text.split() if word.startswith(f"{group}=")}
        assert names <= used | {"cosine"}, names - used  # cosine: the default schedule
    for part in ("optim=sgd", "optim=nesterov", "optim=lbfgs", "trainer.ema_decay", "trainer.micro_batch_size",
                 "augment=mixup"):
        assert part in text
