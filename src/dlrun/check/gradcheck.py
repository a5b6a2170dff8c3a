"""`dlrun check gradcheck`: the notes' gradient check, on the model, loss and penalty training uses.

The notes: compare the analytic gradient f'_a (autograd) with the centred difference
f'_n = (f(w + h) - f(w - h)) / 2h by the relative error |f'_a - f'_n| / max(|f'_a|, |f'_n|):

    > 1e-2            the gradient is probably wrong
    1e-2 .. 1e-4      uncomfortable
    1e-4 .. 1e-7      usually okay for objectives with kinks; too high without
    < 1e-7            happy

So a model with kinks (ReLU and its kin, maxout, max-pooling, SELU's and ELU's corners, the SVM
loss, an L1 penalty) may reach ALLOWED_KINKS, a smooth one must stay under ALLOWED_SMOOTH. Their
advice is followed: float64, few examples (fewer kinks to cross), k coordinates sampled from every
parameter tensor (all of them when it has fewer), and the random effects forced: every evaluation
of f reseeds torch's generator, so dropout draws the same mask each time.

The objective is the data loss plus the configured penalty (l2, l1), on check.examples training
samples, with the model in train mode (BatchNorm's batch statistics, as training computes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dlrun.check.common import Context, Line, run

NAME = "gradcheck"
USAGE = """usage: dlrun check gradcheck [train overrides] [check.KEY=VALUE ...]

The notes' gradient check: the model `dlrun train` would build, in float64, on check.examples
training samples; autograd's gradient of the loss (with the configured penalty) against centred
differences (f(w + h) - f(w - h)) / 2h at check.k sampled coordinates of every parameter tensor.
Prints each tensor's largest relative error |a - n| / max(|a|, |n|) with the notes' band, and fails
(exit 1) a tensor above what its model deserves: 1e-4 with kinks (ReLU, maxout, max-pool, ...),
1e-6 for a smooth model. Trains nothing.

options (configs/check/options.yaml):
  check.examples=4       training samples in the batch
  check.k=10             coordinates sampled from each parameter tensor
  check.h=1e-5           the step h
  check.seed=0           which samples and coordinates; dropout's masks
  check.out=DIR          where check.json goes (default outputs/check/DATE/TIME)

examples:
  dlrun check gradcheck
  dlrun check gradcheck model=lstm data=arrays data.path=seq.npz data.layout=sequence
  dlrun check gradcheck model=lenet check.k=50"""

ALLOWED_KINKS = 1e-4
ALLOWED_SMOOTH = 1e-6
# Float64 rounds each evaluation of f by about eps * |f|, so f'_n carries a rounding error of about
# eps * |f| / h (2.5e-11 for f = 2.3 and h = 1e-5): a gradient of 1e-5 cannot show a relative error
# below ~1e-6 however right it is. A coordinate therefore fails only when |a - n| exceeds both the
# allowed relative error and NOISE_ULPS times that rounding error; the relative error printed is
# the notes' own. Where both gradients are below ZERO they count as equal (a dead unit's weights).
NOISE_ULPS = 10
ZERO = 1e-12


def band(error: float) -> str:
    if error > 1e-2:
        return "wrong"
    if error > 1e-4:
        return "uncomfortable"
    if error > 1e-7:
        return "ok with kinks"
    return "good"


def kinks(model, loss_name: str, l1: float) -> list[str]:
    """What makes the objective non-differentiable somewhere, by name (empty: smooth)."""
    from torch import nn

    from dlrun.models.layers import Maxout

    kinked = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.SELU, nn.CELU, Maxout, nn.MaxPool1d,
              nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
    found = {type(m).__name__ for m in model.modules()
             if isinstance(m, kinked) or (isinstance(m, nn.ELU) and m.alpha != 1.0)
             or (isinstance(m, nn.RNN) and m.nonlinearity == "relu")}
    if loss_name == "multi_margin":
        found.add("the SVM loss")
    if l1:
        found.add("the L1 penalty")
    return sorted(found)


@dataclass
class TensorCheck:
    name: str
    shape: tuple[int, ...]
    coordinates: int
    error: float            # the largest relative error over the sampled coordinates
    analytic: float         # f'_a and f'_n at that coordinate
    numeric: float
    noise: float            # the rounding error allowed on top of the relative one there
    beyond: int = 0         # coordinates whose |a - n| exceeds allowed * max(|a|, |n|) + noise


def check_gradients(model, objective: Callable[[], "torch.Tensor"], k: int = 10, h: float = 1e-5,
                    seed: int = 0, allowed: float = ALLOWED_SMOOTH) -> list[TensorCheck]:
    """Autograd against centred differences at k coordinates of every trainable tensor of `model`.

    `objective()` evaluates the scalar loss; it is called once with gradients and twice per
    coordinate without, each time after torch.manual_seed(seed) (dropout's masks repeat).
    """
    import torch

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    objective().backward()
    pick = torch.Generator().manual_seed(seed)
    results = []
    for name, p in params:
        flat = p.data.view(-1)
        grad = p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(flat)
        chosen = torch.randperm(flat.numel(), generator=pick)[:k].tolist()
        worst = TensorCheck(name, tuple(p.shape), len(chosen), 0.0, 0.0, 0.0, 0.0)
        with torch.no_grad():
            for i in chosen:
                original = flat[i].item()
                flat[i] = original + h
                torch.manual_seed(seed)
                plus = objective().item()
                flat[i] = original - h
                torch.manual_seed(seed)
                minus = objective().item()
                flat[i] = original
                numeric = (plus - minus) / (2 * h)
                analytic = grad[i].item()
                scale = max(abs(analytic), abs(numeric))
                error = abs(analytic - numeric) / scale if scale > ZERO else 0.0
                noise = NOISE_ULPS * torch.finfo(torch.float64).eps * max(abs(plus), abs(minus)) / (2 * h)
                worst.beyond += abs(analytic - numeric) > allowed * scale + noise
                if error >= worst.error:
                    worst.error, worst.analytic, worst.numeric, worst.noise = error, analytic, numeric, noise
        results.append(worst)
    return results


def gradcheck(context: Context) -> list[Line]:
    import torch

    from dlrun.regularization import penalized_weights, penalty
    from dlrun.train.assembly import build_parts

    options = context.options
    parts = build_parts(context.config())
    model, data, loss_fn, reg = parts.model.double(), parts.data, parts.loss, parts.reg
    generator = torch.Generator().manual_seed(options["seed"])
    chosen = torch.randperm(len(data.train), generator=generator)[:options["examples"]].to(parts.device)
    x, y = data.batch(data.train, chosen)
    x = x.double()
    y = y.double() if y.is_floating_point() else y
    weights = penalized_weights(model, reg.exclude_bias_and_norm) if reg.penalized else []
    model.train()

    def objective():
        value = loss_fn(model(x), y)
        return value + penalty(weights, reg.l2, reg.l1) if weights else value

    found = kinks(model, loss_fn.name, reg.l1)
    allowed = ALLOWED_KINKS if found else ALLOWED_SMOOTH
    results = check_gradients(model, objective, options["k"], options["h"], options["seed"], allowed)
    why = f"kinks: {', '.join(found)}" if found else "smooth"
    lines = []
    for r in results:
        value = f"{r.error:.1e} {band(r.error)}"
        data_line = {"error": r.error, "band": band(r.error), "allowed": allowed, "shape": list(r.shape),
                     "coordinates": r.coordinates, "analytic": r.analytic, "numeric": r.numeric, "noise": r.noise,
                     "beyond": r.beyond}
        what = f"{r.name} {list(r.shape)}"
        if r.error <= allowed:
            lines.append(Line(NAME, what, value, "ok", "", data_line))
        elif not r.beyond:
            lines.append(Line(NAME, what, value, "ok", f"|a - n| = {abs(r.analytic - r.numeric):.1e} is within "
                              f"float64's rounding noise of the difference ({r.noise:.1e})", data_line))
        else:
            advice = (f"above {allowed:g}, what a {why} model allows: this tensor's gradient is "
                      + ("wrong" if r.error > 1e-2 else "suspect (kinks crossed? try check.h=1e-6 or fewer examples)"))
            lines.append(Line(NAME, what, value, "fail", advice, data_line))
    context.extras["gradcheck"] = {"allowed": allowed, "model": why, "examples": len(chosen), "k": options["k"],
                                   "h": options["h"]}
    summary = max(results, key=lambda r: r.error)
    failed = sum(r.beyond > 0 for r in results)
    lines.append(Line(NAME, f"largest relative error over {len(results)} tensors", f"{summary.error:.2e} "
                      f"({summary.name}); {failed} tensor{'' if failed == 1 else 's'} failed",
                      "fail" if failed else "ok",
                      f"allowed {allowed:g} ({why}); {len(chosen)} examples, float64, h={options['h']:g}",
                      {"error": summary.error, "allowed": allowed, "failed": failed}))
    return lines


def main(args: list[str]) -> None:
    run(NAME, [(NAME, gradcheck)], args)
