"""Optimizers: each config's update rule against the notes' formula, every optim x sched pair
training an epoch, L-BFGS full-batch on a convex problem, and one-line refusals."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlrun.errors import UserError
from dlrun.optim import build_optimizer
from dlrun.paths import CONFIG_DIR
from tests.conftest import blobs, make_config, refused, train

OPTIMIZERS = sorted(p.stem for p in (Path(CONFIG_DIR) / "optim").glob("*.yaml"))
SCHEDULES = sorted(p.stem for p in (Path(CONFIG_DIR) / "sched").glob("*.yaml"))
GRADS = [np.array([0.5, -2.0, 1e-3]), np.array([0.3, -1.0, 2.0]), np.array([-0.7, 0.2, 0.0])]
X0 = np.array([1.0, -1.0, 0.5])


def notes_rule(name, p):
    """The notes' update (the YAML comments' formulas), in float64 numpy: x after each gradient."""
    x, v, cache, m, t = X0.copy(), np.zeros(3), np.zeros(3), np.zeros(3), 0
    lr = p.lr
    for g in GRADS:
        t += 1
        if name == "sgd":
            x = x - lr * g
        elif name == "momentum":  # v = mu v - lr dx; x += v
            v = p.momentum * v - lr * g
            x = x + v
        elif name == "nesterov":  # the notes' change of variables form
            v_old = v
            v = p.momentum * v - lr * g
            x = x + v + p.momentum * (v - v_old)
        elif name == "adagrad":
            cache = cache + g ** 2
            x = x - lr * g / (np.sqrt(cache) + p.eps)
        elif name == "rmsprop":
            cache = p.alpha * cache + (1 - p.alpha) * g ** 2
            x = x - lr * g / (np.sqrt(cache) + p.eps)
        elif name in ("adam", "adamw"):
            b1, b2 = p.betas
            x = x * (1 - lr * p.weight_decay) if name == "adamw" else x  # decoupled decay first
            m = b1 * m + (1 - b1) * g
            cache = b2 * cache + (1 - b2) * g ** 2
            x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(cache / (1 - b2 ** t)) + p.eps)
        else:
            raise AssertionError(f"no update rule for optim={name} in this test: add one")
    return x


@pytest.mark.parametrize("name", [o for o in OPTIMIZERS if o != "lbfgs"])
def test_each_optimizer_config_takes_the_notes_update(name):
    cfg, _ = make_config(f"optim={name}")
    x = torch.nn.Parameter(torch.tensor(X0, dtype=torch.float64))
    optimizer = build_optimizer(cfg.optim, [x])
    for g in GRADS:
        x.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
    np.testing.assert_allclose(x.detach().numpy(), notes_rule(name, cfg.optim), rtol=1e-10, atol=1e-12)


def test_sgd_is_plain_and_the_momentum_variants_are_named():
    picks = {name: make_config(f"optim={name}")[0].optim for name in ("sgd", "momentum", "nesterov")}
    assert (picks["sgd"].momentum, picks["sgd"].nesterov) == (0.0, False)
    assert (picks["momentum"].momentum, picks["momentum"].nesterov) == (0.9, False)
    assert (picks["nesterov"].momentum, picks["nesterov"].nesterov) == (0.9, True)
    assert make_config("optim=rmsprop")[0].optim.alpha == 0.99  # the notes' decay rate


@pytest.mark.parametrize("sched", SCHEDULES)
@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_every_optimizer_composes_with_every_schedule(tmp_path, optim, sched):
    # One epoch: 6 steps of 256 (1 for L-BFGS: full batch), a small MLP. L-BFGS runs every schedule too:
    # with its line search the lr is the first trial step, which any schedule may scale.
    batch = 2000 if optim == "lbfgs" else 256
    summary = train(tmp_path, f"optim={optim}", f"sched={sched}", "trainer.epochs=1", f"data.batch_size={batch}",
                    "model.hidden=[16]", "trainer.checkpoint=false", "logger.hparams=false", "trainer.device=cpu")
    assert summary["status"] == "finished" and summary["steps"] == (1 if optim == "lbfgs" else 6)
    assert summary["choices"]["optim"] == optim and summary["choices"]["sched"] == sched
    assert np.isfinite(summary["test"]["loss"]) and summary["best"]["epoch"] == 1


def logistic_regression(npz, tmp_path, *overrides):
    """Full-batch softmax regression (model.hidden=[]) on overlapping blobs, 5 steps; the curves
    TensorBoard has: each step's full-batch loss and gradient norm, before its update."""
    x, y = blobs(400, features=6, classes=3, seed=1)
    x = x + np.random.default_rng(2).normal(scale=3.0, size=x.shape).astype(np.float32)  # overlapping: a finite optimum
    path = npz(x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    summary = train(tmp_path, "data=arrays", f"data.path={path}", "data.batch_size=1000", "model.hidden=[]",
                    "sched=constant", "trainer.epochs=5", "logger.every=1", "trainer.checkpoint=false",
                    "logger.hparams=false", *overrides)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    curves = {tag: [e.value for e in events.Scalars(tag)] for tag in ("train/loss", "grad_norm", "lr")}
    assert [e.step for e in events.Scalars("lr")] == [1, 2, 3, 4, 5]  # one step an epoch: each epoch's end
    return summary, curves


def test_full_batch_lbfgs_beats_as_many_sgd_steps_on_logistic_regression(npz, tmp_path):
    """5 full-batch steps each: L-BFGS (up to 20 iterations a step) against plain SGD and Adam."""
    lbfgs, lbfgs_curves = logistic_regression(npz, tmp_path / "lbfgs", "optim=lbfgs")
    sgd_summary, sgd = logistic_regression(npz, tmp_path / "sgd", "optim=sgd")
    adam_summary, adam = logistic_regression(npz, tmp_path / "adam", "optim=adam", "optim.lr=0.01")
    assert lbfgs["steps"] == 5 and lbfgs["precision"] == "32"
    loss, grad = lbfgs_curves["train/loss"], lbfgs_curves["grad_norm"]
    assert loss[0] == pytest.approx(sgd["train/loss"][0])  # the same start
    assert loss[-1] < 0.6 * min(sgd["train/loss"][-1], adam["train/loss"][-1])
    # A convex loss: a vanishing gradient means the global minimum (SGD gets there in ~300 steps).
    assert grad[-1] < 1e-4 * grad[0] and sgd["grad_norm"][-1] > 0.5 * sgd["grad_norm"][0]
    assert lbfgs["test"]["loss"] < 0.6 * min(sgd_summary["test"]["loss"], adam_summary["test"]["loss"])


@pytest.mark.parametrize("overrides,message", [
    (("optim.lr=-0.1",), "optim.lr=-0.1 must be a number > 0"),
    (("optim=momentum", "optim.momentum=1.0"), "optim.momentum=1.0 must be a number in [0, 1)"),
    (("optim=momentum", "optim.momentum=-0.5"), "optim.momentum=-0.5 must be a number in [0, 1)"),
    (("optim=nesterov", "optim.momentum=0"), "optim.nesterov=true needs optim.momentum > 0"),
    (("optim=sgd", "optim.weight_decay=-1"), "optim.weight_decay=-1 must be a number >= 0"),
    (("optim=adam", "optim.betas=[0.9,1.0]"), "optim.betas=[0.9, 1.0] must be a list of 2 numbers in [0, 1)"),
    (("optim=adamw", "optim.eps=0"), "optim.eps=0 must be a number > 0"),
    (("optim=rmsprop", "optim.alpha=1"), "optim.alpha=1 must be a number in [0, 1)"),
    (("optim=adagrad", "optim.lr_decay=-1"), "optim.lr_decay=-1 must be a number >= 0"),
    (("optim=lbfgs", "optim.history_size=0"), "optim.history_size=0 must be an integer >= 1"),
    (("optim=lbfgs", "optim.line_search_fn=armijo"), "optim.line_search_fn='armijo' must be one of strong_wolfe or null"),
    (("optim=sgd", "+optim.foo=1"), "optim.foo: unknown key for torch.optim.SGD; its keys: _target_, _partial_, lr,"),
    (("optim=lbfgs", "trainer.precision=fp16"), "optim=lbfgs cannot run with trainer.precision=fp16"),
    (("optim=lbfgs", "trainer.grad_clip=1.0"), "optim=lbfgs cannot run with trainer.grad_clip=1"),
    (("optim=lbfgs", "trainer.micro_batch_size=8"), "optim=lbfgs cannot run with trainer.micro_batch_size=8"),
    (("trainer.micro_batch_size=0",), "trainer.micro_batch_size=0 must be an integer >= 1 or null"),
])
def test_bad_values_fail_before_training_in_one_line(tmp_path, overrides, message):
    with pytest.raises(UserError) as error:
        train(tmp_path, *overrides, "trainer.device=cpu")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert refused(tmp_path) and not (tmp_path / "tb").exists()


@pytest.mark.parametrize("overrides,expected", [
    (("+optim.fused=false", "optim.foreach=false", "+optim.maximize=false"), {"fused": False, "foreach": False}),
    (("optim=adam", "+optim.decoupled_weight_decay=true", "optim.weight_decay=0.01"), {"decoupled_weight_decay": True}),
    (("optim=sgd", "optim.foreach=true", "+optim.differentiable=false"), {"foreach": True, "differentiable": False}),
    (("optim=rmsprop", "+optim.capturable=false", "+optim.maximize=true"), {"maximize": True}),
    (("optim._target_=torch.optim.NAdam", "+optim.momentum_decay=0.004"), {"momentum_decay": 0.004}),
])
def test_every_argument_torch_takes_is_accepted_and_reaches_the_optimizer(overrides, expected):
    """Optimizer schemas come from torch's signatures: fused, foreach, maximize, ... need no copy in dlrun,
    and any torch.optim class gets its own (NAdam's momentum_decay)."""
    from dlrun.schema import validate

    cfg, _ = make_config(*overrides)
    validate(cfg)
    optimizer = build_optimizer(cfg.optim, [torch.nn.Parameter(torch.zeros(2))])
    assert {key: optimizer.defaults[key] for key in expected} == expected


@pytest.mark.parametrize("overrides,message", [
    (("optim.foreach=maybe",), "optim.foreach='maybe' must be true or false"),
    (("+optim.fused=maybe",), "optim.fused='maybe' must be true or false"),
    (("optim._target_=torch.optim.NAdam", "+optim.momentum_decayy=1"),
     "optim.momentum_decayy: unknown key for torch.optim.NAdam; its keys: _target_, _partial_, lr, betas, eps, weight_decay, momentum_decay,"),
    (("optim._target_=torch.optim.NAdam", "optim.lr=-1"), "optim.lr=-1 must be a number > 0"),
])
def test_a_signature_schema_still_checks_types_ranges_and_names(overrides, message):
    from dlrun.schema import validate

    cfg, _ = make_config(*overrides)
    with pytest.raises(UserError) as caught:
        validate(cfg)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_mistyped_key_the_config_lacks_is_refused_naming_the_one_meant_and_the_keys(tmp_path):
    from tests.conftest import dlrun_here

    result = dlrun_here("train", "optim.lrr=0.1", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("dlrun train: error: optim.lrr: unknown key for torch.optim.Adam (did you mean optim.lr?); "
                               "its keys: lr, betas, eps, weight_decay, foreach;"), lines[0]
    assert not (tmp_path / "outputs").exists()
