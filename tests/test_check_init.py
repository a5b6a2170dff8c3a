"""`dlrun check init`: the notes' activation-statistics experiment, its findings asserted on the numbers."""

import json
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlrun.check import CHECKS
from dlrun.check.init_stats import DEFAULT_PAIRS, activation_stats, parse_pair, read_options
from dlrun.errors import UserError
from tests.conftest import dlrun_here

WIDTH = 1024  # the notes use 4096 (the CLI test runs that); 1024 shows the same and takes a fifth of the time


@pytest.fixture(scope="module")
def notes():
    """The notes' five pairs, 6 layers, batch 16, seed 0: {'tanh:small_normal': PairStats, ...}."""
    return {pair.name: pair for pair in activation_stats(DEFAULT_PAIRS, layers=6, width=WIDTH, batch=16, seed=0)}


def test_default_pairs_are_the_notes_five(notes):
    assert list(notes) == ["tanh:small_normal", "tanh:large_normal", "tanh:xavier_fanin", "relu:xavier_fanin",
                           "relu:he_normal"]
    assert all([row.layer for row in pair.layers] == [1, 2, 3, 4, 5, 6] for pair in notes.values())


def test_tanh_with_std_001_collapses_towards_zero(notes):
    pair = notes["tanh:small_normal"]
    assert pair.std_ratio() < 0.25
    stds = [row.std for row in pair.layers]
    assert stds == sorted(stds, reverse=True)  # shrinks at every layer
    # Near 0 tanh is the identity: each layer multiplies the variance by fan_in * 0.01^2.
    assert all(r == pytest.approx(WIDTH * 0.01**2, rel=0.1) for r in pair.var_ratios()[1:])
    assert all(abs(row.mean) < 0.1 * row.std for row in pair.layers)
    assert all(row.saturated == 0 for row in pair.layers)


def test_tanh_with_std_1_saturates(notes):
    pair = notes["tanh:large_normal"]
    assert pair.layers[-1].saturated > 0.9  # the notes: "all activations saturate"
    assert all(row.saturated > 0.9 and row.std > 0.95 for row in pair.layers)


def test_tanh_with_the_notes_xavier_stays_scaled(notes):
    pair = notes["tanh:xavier_fanin"]
    assert 0.2 < pair.std_ratio() < 1.0
    assert all(0.2 < row.std < 0.8 for row in pair.layers)
    assert pair.layers[-1].saturated < 0.01


def test_relu_with_xavier_halves_the_variance_every_layer(notes):
    pair = notes["relu:xavier_fanin"]
    assert pair.std_ratio() < 0.25
    ratios = pair.var_ratios()
    assert len(ratios) == 5 and all(0.4 < r < 0.6 for r in ratios), ratios
    assert all(row.saturated is None for row in pair.layers)  # ReLU has no upper bound


def test_relu_with_he_stays_flat(notes):
    pair = notes["relu:he_normal"]
    assert 0.7 < pair.std_ratio() < 1.4
    assert all(0.8 < r < 1.25 for r in pair.var_ratios())


def test_seeded_deterministic_and_the_same_draws_for_every_pair():
    a = activation_stats(["relu:he_normal", "relu:xavier_fanin"], layers=3, width=256, seed=3)
    b = activation_stats([("relu", "xavier_fanin")], layers=3, width=256, seed=3)
    assert a[1] == b[0]  # a pair's numbers do not depend on the pairs before it
    # Both draw the same standard normals (He scales them by sqrt(2)), and ReLU is positively
    # homogeneous, so each He layer is sqrt(2)^layer times the Xavier one.
    for layer, (he, xavier) in enumerate(zip(a[0].layers, a[1].layers), start=1):
        assert he.std == pytest.approx(xavier.std * 2 ** (layer / 2), rel=1e-4)
    assert activation_stats(["tanh:he"], layers=2, width=64, seed=4) != activation_stats(
        ["tanh:he"], layers=2, width=64, seed=5)


@pytest.mark.parametrize("options,message", [
    ({"layers": 0}, "check.layers=0 must be a whole number >= 1"),
    ({"width": 2.5}, "check.width=2.5 must be a whole number >= 1"),
    ({"pairs": ["tanh-small_normal"]}, "'tanh-small_normal' is not ACTIVATION:INIT"),
    ({"pairs": ["maxout:he_normal"]}, "is not ACTIVATION:INIT with an activation of relu"),
    ({"pairs": ["tanh:glorot"]}, "has no init 'glorot'; choose one of default, small_normal"),
    ({"pairs": []}, "check.pairs is empty"),
    ({"histograms": "yes"}, "check.histograms='yes' must be true or false"),
])
def test_bad_options_are_refused(options, message):
    base = {"layers": 6, "width": 8, "batch": 16, "seed": 0, "pairs": ["relu:he_normal"], "histograms": True,
            "out": "x"}
    with pytest.raises(UserError) as info:
        read_options({**base, **options})
    assert message in str(info.value)
    assert parse_pair("relu:he") == ("relu", "he_normal") and parse_pair("tanh:xavier") == ("tanh", "xavier_uniform")


def table_rows(stdout: str) -> dict[str, list[list[float]]]:
    """The printed table: pair -> [[layer, mean, std, std / layer 1], ...]."""
    rows: dict[str, list[list[float]]] = {}
    name = None
    for line in stdout.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        name = cells[0] or name
        rows.setdefault(name, []).append([float(c) for c in cells[1:5]])
    return rows


@pytest.mark.slow
def test_cli_runs_the_notes_experiment_prints_the_table_and_writes_json_and_histograms(tmp_path):
    result = dlrun_here("check", "init", "check.out=run", cwd=tmp_path)  # the notes' default: 6 x 4096, batch 16
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dlrun check init: 6 layers x 4096 units, no bias, x ~ N(0, 1), batch 16, seed 0\n")
    printed = table_rows(result.stdout)
    assert list(printed) == list(DEFAULT_PAIRS)
    ratio = {name: rows[-1][3] for name, rows in printed.items()}  # std / layer 1 at the last layer
    assert ratio["tanh:small_normal"] < 0.25 and ratio["relu:xavier_fanin"] < 0.25
    assert 0.7 < ratio["relu:he_normal"] < 1.4 and ratio["tanh:xavier_fanin"] > 0.2

    report = json.loads((tmp_path / "run" / "check.json").read_text())
    assert (report["layers"], report["width"], report["batch"], report["seed"]) == (6, 4096, 16, 0)
    pairs = {f"{p['activation']}:{p['init']}": p for p in report["pairs"]}
    assert list(pairs) == list(DEFAULT_PAIRS)
    assert pairs["tanh:large_normal"]["layers"][-1]["saturated"] > 0.9
    assert all(0.4 < r < 0.6 for r in pairs["relu:xavier_fanin"]["var_over_previous"])
    for name, rows in printed.items():  # the table shows check.json's numbers, rounded
        for row, layer in zip(rows, pairs[name]["layers"]):
            assert row[0] == layer["layer"] and row[2] == pytest.approx(layer["std"], abs=6e-5)

    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    assert events.Tags()["histograms"] == [f"check/init/{name}" for name in DEFAULT_PAIRS]
    assert all(tag.startswith("check/") for tag in events.Tags()["scalars"])  # no top-level group of its own
    for name in DEFAULT_PAIRS:
        histograms = events.Histograms(f"check/init/{name}")
        assert [h.step for h in histograms] == [1, 2, 3, 4, 5, 6]
        assert all(h.histogram_value.num == 16 * 4096 for h in histograms)
        assert [s.value for s in events.Scalars(f"check/init/{name}/std")] == pytest.approx(
            [layer["std"] for layer in pairs[name]["layers"]], rel=1e-6)
    tanh_last = events.Histograms("check/init/tanh:large_normal")[-1].histogram_value
    assert tanh_last.min >= -1 and tanh_last.max <= 1


def test_cli_small_run_writes_to_outputs_check(tmp_path):
    result = dlrun_here("check", "init", "check.width=128", "check.layers=3", "check.pairs=[relu:he,tanh:xavier_normal]",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [report] = list((tmp_path / "outputs" / "check").glob("*/*/check.json"))
    assert [p["init"] for p in json.loads(report.read_text())["pairs"]] == ["he_normal", "xavier_normal"]
    assert list((report.parent / "tb").glob("events.out.tfevents.*"))
    assert list(table_rows(result.stdout)) == ["relu:he_normal", "tanh:xavier_normal"]


@pytest.mark.parametrize("args,message", [
    (["init", "check.layers=0"], "dlrun check: error: check.layers=0 must be a whole number >= 1"),
    (["init", "check.pairs=[tanh:nope]"], "dlrun check: error: check.pairs: 'tanh:nope' has no init 'nope'"),
    (["init", "check.depth=3"], "dlrun check: error: Could not override 'check.depth'"),
    (["init", "--out", "x"], "dlrun check: error: unknown option '--out'"),
    (["lr-rnage"], "dlrun check: error: unknown check 'lr-rnage'; choose one of: init"),
])
def test_mistakes_are_one_line_and_exit_2_and_write_nothing(tmp_path, args, message):
    result = dlrun_here("check", *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_an_existing_check_json_is_not_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "check.json").write_text("{}")
    result = dlrun_here("check", "init", "check.out=run", "check.width=8", cwd=tmp_path)
    assert result.returncode == 2 and "already holds a check.json" in result.stderr
    assert (tmp_path / "run" / "check.json").read_text() == "{}"


def test_help_reads_the_registry_without_torch_or_hydra():
    assert "init" in CHECKS
    code = ("import sys; from dlrun.cli import main; main(['check', '--help']); main(['check', 'init', '--help']); "
            "main(['check']); heavy = [m for m in ('torch', 'hydra') if m in sys.modules]; assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dlrun check <check>") and "\n  init  " in result.stdout
    assert "usage: dlrun check init [check.KEY=VALUE ...]" in result.stdout and "check.pairs=[...]" in result.stdout
