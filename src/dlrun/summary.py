"""`dlrun summary [--depth N] [overrides]`: the model `dlrun train` would build, layer by layer.

The config is composed with Hydra's compose API rather than as a Hydra app, so nothing is run,
no run directory is made and no file is written. Its options and --help are dlrun.options'.
torch, Hydra and torchinfo are imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from rich.table import Table
    from torch import nn

# Samples fed through the model (`dlrun summary --help` says how many): real shapes, and a batch
# dimension that is not a lone 1.
BATCH = 2


def main(argv: list[str]) -> None:
    """Compose, build as training does, print the table. Errors propagate to the CLI's `fail`."""
    from dlrun.options import parse

    args = parse("summary", argv)
    from hydra import compose, initialize_config_dir

    from dlrun.paths import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    # torch only now: a mistyped option or override is reported without its second of start-up.
    from rich import get_console

    from dlrun.build import build, build_model
    from dlrun.schema import validate

    validate(cfg)
    data = build(cfg.data)  # tensors stay on the CPU: no .to(device) as in training
    model = build_model(cfg, data)
    x, _ = data.batch("train", slice(0, BATCH))  # preprocessed, as the model reads it
    console = get_console()
    console.print(f"data {data.describe()}", highlight=False, soft_wrap=True)
    console.print(layer_table(model, x, args.depth, f"dlrun summary: {type(model).__name__}, input {list(x.shape)}"))


def _shape(size: list[Any]) -> str:
    # torchinfo leaves output_size empty for a module that never ran in forward().
    return str(list(size)) if size else "--"


def _row_params(layer: Any, depth: int) -> tuple[int, int] | None:
    """(parameters, trainable) a row shows, following torchinfo's own table so the rows add up
    to the total: a leaf, or a row at the depth limit, holds everything below it; a container
    above the limit only what it holds directly (its children have rows). None: a module used twice."""
    if layer.is_recursive:
        return None
    if layer.is_leaf_layer or layer.depth == depth:
        return layer.num_params, layer.trainable_params
    return layer.leftover_params(), layer.leftover_trainable_params()


def layer_table(model: nn.Module, x: torch.Tensor, depth: int, title: str | None = None) -> Table:
    """The rich table of `model`'s layers down to `depth`, from a forward pass on the batch `x`, then the totals."""
    import torchinfo
    from rich.table import Table

    stats = torchinfo.summary(model, input_data=[x], depth=depth, verbose=0, mode="eval")
    # summary_list has every depth; torchinfo applies `depth` only when it formats its own text.
    rows = [layer for layer in stats.summary_list if layer.depth <= depth]
    frozen = stats.total_params - stats.trainable_params
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape")
    table.add_column("parameters", justify="right")
    if frozen:  # a column of "yes" on every row says nothing; show it only once something is frozen
        table.add_column("trainable")
    for layer in rows:
        counts = _row_params(layer, depth)
        name = "  " * layer.depth + layer.var_name if layer.depth else "(model)"  # the root's var_name is its class
        cells = [name, layer.class_name, _shape(layer.output_size)]
        if counts is None:
            cells.append("(shared)")
        else:
            cells.append(f"{counts[0]:,}" if counts[0] else "--")
        if frozen:
            n, trainable = counts or (0, 0)
            cells.append("" if n == 0 else "yes" if trainable == n else "no" if trainable == 0 else "partial")
        table.add_row(*cells)
    table.add_section()
    # torchinfo's mult-adds count the whole batch (each layer's MACs scale with its batch dimension).
    totals = {
        "total parameters": stats.total_params,
        "trainable": stats.trainable_params,
        "non-trainable": frozen,
        "mult-adds per sample": stats.total_mult_adds // len(x),
    }
    for name, value in totals.items():
        table.add_row(name, "", "", f"{value:,}", *([""] if frozen else []), style="bold" if name.startswith("total") else None)
    return table
