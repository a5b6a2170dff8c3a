"""`dlrun check init`: the notes' activation-statistics experiment (seeds 003, "Weight Initialization").

    dims = [4096] * 7; x = np.random.randn(16, dims[0])
    for Din, Dout in zip(dims[:-1], dims[1:]):
        W = <init>(Din, Dout); x = <activation>(x.dot(W)); hs.append(x)

For each (activation, init) pair, a batch of x ~ N(0, 1) goes through `layers` fully connected
layers of `width` units without biases; each layer's activations are summarised (mean, std, the
share saturated) and their histograms written to TensorBoard, one histogram series per pair with
the layer as its step. The weights are drawn with dlrun.init's own schemes, so what this shows is
what `init=` does. One weight buffer is refilled layer after layer; a seeded generator makes the
numbers the same on every run, and the same input and draws for every pair.

The config is composed with Hydra's compose API from configs/check_init.yaml (keys under
`check.`): a mistyped key fails before torch is imported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlrun import strict_json
from dlrun.errors import UserError
from dlrun.models.bounds import BOUNDS, SATURATION_MARGIN

if TYPE_CHECKING:
    from rich.table import Table

    from dlrun.monitor.tensorboard import RunWriter

CONFIG = "check_init"
DEFAULT_PAIRS = ("tanh:small_normal", "tanh:large_normal", "tanh:xavier_fanin", "relu:xavier_fanin", "relu:he_normal")

USAGE = f"""usage: dlrun check init [check.KEY=VALUE ...]

The notes' activation-statistics experiment: a batch of x ~ N(0, 1) through a stack of fully
connected layers without biases, once for each activation + init pair; prints each layer's
activation mean and std (and, for tanh and sigmoid, the share of saturated units), writes the
numbers to check.json and each layer's activation histogram to TensorBoard. Trains nothing.

options (configs/check_init.yaml):
  check.layers=6           fully connected layers
  check.width=4096         units in each layer (and in the input)
  check.batch=16           samples in the batch
  check.seed=0             seeds the input and the weights (the same for every pair)
  check.pairs=[...]        activation:init pairs; default {",".join(DEFAULT_PAIRS)}
                           activations: relu, leaky_relu, prelu, elu, selu, gelu, softplus, silu, tanh,
                           sigmoid; inits: the init= schemes (default, small_normal, xavier_fanin, ...)
  check.histograms=true    false: no TensorBoard histograms (check.json is still written)
  check.out=DIR            where check.json and tb/ go (default outputs/check/DATE/TIME)

examples:
  dlrun check init
  dlrun check init check.layers=10 check.width=1024 check.pairs=[tanh:xavier_normal,selu:lecun_normal]
  tensorboard --logdir outputs/check"""


@dataclass
class LayerStats:
    layer: int
    mean: float
    std: float
    saturated: float | None  # share of units within SATURATION_MARGIN of a bound; None if unbounded


@dataclass
class PairStats:
    activation: str
    init: str
    layers: list[LayerStats] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.activation}:{self.init}"

    def std_ratio(self) -> float | None:
        """The last layer's activation std over the first layer's (None if the first is 0)."""
        first = self.layers[0].std
        return self.layers[-1].std / first if first else None

    def var_ratios(self) -> list[float | None]:
        """Each layer's activation variance over the layer before it (layers 2 on; None after a 0)."""
        return [(b.std / a.std) ** 2 if a.std else None for a, b in zip(self.layers, self.layers[1:])]


def parse_pair(text: object) -> tuple[str, str]:
    """'relu:he_normal' -> ('relu', 'he_normal'), both names checked (the init aliases xavier and he too)."""
    from dlrun.init import ALIASES, SCHEMES
    from dlrun.models.layers import ELEMENTWISE

    activation, sep, scheme = str(text).partition(":")
    if not sep or activation not in ELEMENTWISE:
        raise UserError(f"check.pairs: {text!r} is not ACTIVATION:INIT with an activation of "
                        f"{', '.join(ELEMENTWISE)}; e.g. check.pairs=[tanh:xavier_fanin,relu:he_normal]")
    if scheme not in SCHEMES and scheme not in ALIASES:
        raise UserError(f"check.pairs: {text!r} has no init {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return activation, ALIASES.get(scheme, scheme)


def _count(options: dict[str, Any], key: str, least: int) -> int:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"check.{key}={value!r} must be a whole number >= {least}")
    return value


def read_options(options: dict[str, Any]) -> dict[str, Any]:
    """The composed `check` node, checked: UserError names a bad value before anything runs."""
    pairs = options["pairs"]
    pairs = [pairs] if isinstance(pairs, str) else list(pairs or [])
    if not pairs:
        raise UserError("check.pairs is empty; give at least one ACTIVATION:INIT, e.g. check.pairs=[relu:he_normal]")
    if not isinstance(options["histograms"], bool):
        raise UserError(f"check.histograms={options['histograms']!r} must be true or false")
    seed = options["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"check.seed={seed!r} must be a whole number")
    return {
        "layers": _count(options, "layers", 1),
        "width": _count(options, "width", 1),
        "batch": _count(options, "batch", 1),
        "seed": seed,
        "pairs": [parse_pair(p) for p in pairs],
        "histograms": options["histograms"],
        "out": str(options["out"]),
    }


def activation_stats(pairs: list[tuple[str, str]] | tuple[str, ...] = DEFAULT_PAIRS, layers: int = 6,
                     width: int = 4096, batch: int = 16, seed: int = 0,
                     writer: RunWriter | None = None) -> list[PairStats]:
    """Run the experiment; one PairStats per pair, with one LayerStats per layer.

    `pairs` are (activation, init) tuples or 'activation:init' strings. With a writer, each
    layer's activations go to TensorBoard as the histogram `<activation>:<init>` at step = layer,
    and their mean and std as scalars `<activation>:<init>/mean` and `/std`.
    """
    import torch

    from dlrun.init import gain_of, init_weight
    from dlrun.models.layers import activation as activation_module

    pairs = [parse_pair(p) if isinstance(p, str) else parse_pair(":".join(p)) for p in pairs]
    weight = torch.empty(width, width)  # one buffer, refilled for every layer of every pair
    results = []
    with torch.inference_mode():
        for act_name, scheme in pairs:
            generator = torch.Generator().manual_seed(seed)  # the same input and draws for every pair
            act = activation_module(act_name)
            nonlinearity, slope = gain_of(act_name)
            x = torch.randn(batch, width, generator=generator)
            stats = PairStats(act_name, scheme)
            for layer in range(1, layers + 1):
                init_weight(weight, scheme, nonlinearity, slope, generator=generator)
                x = act(x @ weight.T)
                std, mean = torch.std_mean(x, correction=0)  # np.std's, as in the notes
                saturated = None
                if act_name in BOUNDS:
                    low, high = BOUNDS[act_name]
                    saturated = ((x < low + SATURATION_MARGIN) | (x > high - SATURATION_MARGIN)).float().mean().item()
                stats.layers.append(LayerStats(layer, mean.item(), std.item(), saturated))
                if writer is not None and writer.writer is not None:
                    writer.writer.add_histogram(f"check/init/{stats.name}", x, global_step=layer)
                    writer.scalars({f"check/init/{stats.name}/mean": mean.item(), f"check/init/{stats.name}/std": std.item()},
                                   layer)
            results.append(stats)
    return results


def _std(value: float) -> str:
    return f"{value:.4f}" if value >= 1e-3 or value == 0 else f"{value:.2e}"


def _mean(value: float) -> str:
    text = f"{value:.4f}"
    return "0.0000" if text == "-0.0000" else text


def stats_table(results: list[PairStats], title: str | None = None) -> Table:
    """One block of rows a pair, one row a layer: mean, std, std over layer 1's, variance over the
    previous layer's, and the saturated share for bounded activations."""
    from rich.table import Table

    table = Table(title=title, title_justify="left",
                  caption="saturated: share of units within 0.01 of tanh's -1 and 1 (sigmoid's 0 and 1)",
                  caption_justify="left")
    # 80 columns hold the notes' five pairs: the names and numbers (-0.0001, 9.84e-04, 100.0%) keep
    # their width and the ratio headers take two lines.
    table.add_column("activation:init", no_wrap=True, min_width=max(len(r.name) for r in results))
    table.add_column("layer", justify="right", min_width=5)
    table.add_column("mean", justify="right", min_width=7)
    table.add_column("std", justify="right", min_width=8)
    table.add_column("std /\nlayer 1", justify="right")
    table.add_column("var /\nprev", justify="right")
    table.add_column("saturated", justify="right", min_width=9)
    for i, pair in enumerate(results):
        if i:
            table.add_section()
        first = pair.layers[0].std
        for row, ratio in zip(pair.layers, [None, *pair.var_ratios()]):
            var_cell = "" if row.layer == 1 else "--" if ratio is None else f"{ratio:.3f}"
            table.add_row(pair.name if row.layer == 1 else "", str(row.layer), _mean(row.mean), _std(row.std),
                          f"{row.std / first:.3f}" if first else "--", var_cell,
                          "" if row.saturated is None else f"{row.saturated:.1%}")
    return table


def main(args: list[str]) -> None:
    """Compose, check, run, print the table, write check.json and the histograms."""
    from omegaconf import OmegaConf

    from dlrun.check.common import compose, output_dir

    cfg = compose(list(args), CONFIG, extra=())
    options = read_options(OmegaConf.to_container(cfg.check, resolve=True))
    out = output_dir(Path(options["out"]))  # before torch's start-up: a clash costs nothing
    import time

    from rich import get_console

    from dlrun.monitor.tensorboard import RunWriter

    layers, width, batch, seed = (options[k] for k in ("layers", "width", "batch", "seed"))
    writer = RunWriter(out / "tb", enabled=options["histograms"])
    start = time.perf_counter()
    try:
        results = activation_stats(options["pairs"], layers, width, batch, seed, writer)
    finally:
        writer.close()
    seconds = time.perf_counter() - start
    report = {
        "layers": layers, "width": width, "batch": batch, "seed": seed, "bias": False, "input": "N(0, 1)",
        "wall_s": round(seconds, 3),
        "pairs": [{"activation": r.activation, "init": r.init, "std_last_over_first": r.std_ratio(),
                   "var_over_previous": r.var_ratios(), "layers": [asdict(row) for row in r.layers]}
                  for r in results],
    }
    (out / "check.json").write_text(strict_json.dumps(report, indent=2) + "\n")
    console = get_console()
    # soft_wrap: these lines are never broken at the terminal's width (the paths stay copyable).
    console.print(f"dlrun check init: {layers} layers x {width} units, no bias, x ~ N(0, 1), batch {batch}, "
                  f"seed {seed}", highlight=False, soft_wrap=True)
    console.print(stats_table(results))
    pairs = f"{len(results)} pair{'' if len(results) == 1 else 's'}"
    console.print(f"{pairs} in {seconds:.1f} s; numbers in {out / 'check.json'}", highlight=False, soft_wrap=True)
    if options["histograms"]:
        console.print(f"histograms: tensorboard --logdir {out / 'tb'}", highlight=False, soft_wrap=True)
