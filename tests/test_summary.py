"""`dlrun summary`: the layer table of the model `dlrun train` would build, and nothing written."""

import io
import re
import subprocess
import sys

import pytest
from rich.console import Console

from dlrun.build import build, build_model
from dlrun import options
from dlrun.summary import BATCH, layer_table
from tests.conftest import make_config, dlrun_here


def built(*overrides: str):
    """The data and the model exactly as `dlrun train` builds them from these overrides."""
    cfg, _ = make_config(*overrides)
    data = build(cfg.data)
    return data, build_model(cfg, data)


def parse(text: str) -> tuple[list[list[str]], dict[str, int], list[str]]:
    """The printed table as (layer rows as cells, totals by name, header cells).

    Rows are the box lines; the name cell keeps its indentation (rich pads cells by one space).
    """
    lines = [line for line in text.splitlines() if line.startswith(("│", "┃"))]
    header = [cell.strip() for cell in lines[0].split("┃")[1:-1]]
    body = [[cell[1:].rstrip() for cell in line.split("│")[1:-1]] for line in lines[1:]]
    split = next(i for i, row in enumerate(body) if row[0] == "total parameters")
    params = header.index("parameters")
    totals = {row[0]: int(row[params].replace(",", "")) for row in body[split:]}
    return body[:split], totals, header


def row_params(rows: list[list[str]], header: list[str]) -> int:
    column = header.index("parameters")
    return sum(int(row[column].replace(",", "")) for row in rows if row[column].strip() != "--")


def render(table) -> str:
    console = Console(width=150, file=io.StringIO(), record=True)
    console.print(table)
    return console.export_text()


def test_default_summary_prints_the_real_totals_and_shapes_and_writes_nothing(tmp_path):
    result = dlrun_here("summary", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _, model = built()
    real = sum(p.numel() for p in model.parameters())
    assert real == 85_002
    rows, totals, header = parse(result.stdout)
    assert totals["total parameters"] == real and totals["trainable"] == real and totals["non-trainable"] == 0
    # Every Linear of the MLP does one multiply-add per weight and one add per bias per sample.
    assert totals["mult-adds per sample"] == real
    assert row_params(rows, header) == real  # the rows add up to the total
    assert "trainable" not in header  # nothing is frozen: no column of "yes"
    assert rows[0][:3] == ["(model)", "MLP", "[2, 10]"]
    assert rows[-1][1:3] == ["Linear", "[2, 10]"]  # the final layer, on a real batch of 2 samples
    assert rows[1][1:3] == ["Flatten", "[2, 64]"]  # 8x8 digits, flattened
    assert "data digits: 1294/144/359" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no outputs/, no file at all


def test_lenet_total_and_depth_limit(tmp_path):
    # --depth comes after an override.
    full, shallow = (dlrun_here("summary", *args, cwd=tmp_path) for args in (["model=lenet"], ["model=lenet", "--depth", "1"]))
    assert full.returncode == 0 and shallow.returncode == 0, full.stderr + shallow.stderr
    _, model = built("model=lenet")
    real = sum(p.numel() for p in model.parameters())
    full_rows, full_totals, header = parse(full.stdout)
    shallow_rows, shallow_totals, _ = parse(shallow.stdout)
    assert full_totals["total parameters"] == shallow_totals["total parameters"] == real == 61_706
    assert len(shallow_rows) < len(full_rows)
    assert [row[0] for row in shallow_rows] == ["(model)", "  pad", "  features", "  classifier"]
    # At the depth limit a container's row holds everything below it, so the rows still add up.
    assert row_params(full_rows, header) == row_params(shallow_rows, header) == real
    shapes = {row[0].strip(): row[2] for row in shallow_rows}
    assert shapes["pad"] == "[2, 1, 32, 32]" and shapes["features"] == "[2, 16, 5, 5]"  # 8x8 padded to 32x32
    assert full_rows[-1][1:3] == ["Linear", "[2, 10]"]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args,message", [
    (["model=nope"], "Could not find 'model/nope'; Available options in 'model': "),
    (["--depth", "abc"], "--depth needs a whole number >= 0, got 'abc'"),
    (["-m", "model=mlp,lenet"], "unknown option '-m'"),
])
def test_mistakes_are_one_line_and_exit_2(tmp_path, args, message):
    result = dlrun_here("summary", *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlrun summary: error: ") and message in lines[0], result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_help_does_not_import_torch():
    code = ("import sys; from dlrun.cli import main; main(['summary', '--help']); "
            "assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dlrun summary [--depth N]") and "dlrun summary model=lenet" in result.stdout
    assert re.search(rf"run {BATCH}\s+training samples through it", result.stdout)  # what main feeds the model


def test_depth_is_taken_out_wherever_it_is():
    def parsed(*args):
        given = options.parse("summary", list(args))
        return given.depth, given.overrides

    assert parsed("model=cnn", "--depth", "1", "data=arrays") == (1, ["model=cnn", "data=arrays"])
    assert parsed("--depth=0") == (0, [])
    assert parsed("optim.lr=-1", "+optim.fused=true", "~model.hidden") == (3, ["optim.lr=-1", "+optim.fused=true",
                                                                               "~model.hidden"])


def test_frozen_parameters_are_non_trainable_in_the_rows_and_totals():
    data, model = built("model=lenet")
    for p in model.features.parameters():
        p.requires_grad_(False)
    model.classifier[1].bias.requires_grad_(False)  # a layer half frozen
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == 156 + 2416 + 120

    rows, totals, header = parse(render(layer_table(model, data.batch("train", slice(0, 2))[0], depth=3)))
    assert totals["non-trainable"] == frozen
    assert totals["trainable"] == totals["total parameters"] - frozen == 61_706 - frozen
    trainable = {row[0].strip() + " " + row[1]: row[header.index("trainable")] for row in rows}
    assert trainable["0 Conv2d"] == trainable["3 Conv2d"] == "no"
    assert trainable["1 Linear"] == "partial" and trainable["3 Linear"] == trainable["5 Linear"] == "yes"
    assert trainable["1 Tanh"] == ""  # no parameters, nothing to say

    shallow, _, header = parse(render(layer_table(model, data.batch("train", slice(0, 2))[0], depth=1)))
    by_name = {row[0].strip(): row[header.index("trainable")] for row in shallow}
    assert by_name["features"] == "no" and by_name["classifier"] == "partial"
