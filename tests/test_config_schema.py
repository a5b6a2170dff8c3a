"""The groups' schemas (dlrun.schema): every shipped option validates, every bad value is one line.

The property test throws random overrides at the whole path a run takes before training
(compose, validate, build the data, loss, model, optimizer and schedule) and asserts that what
comes back is either a run ready to train or an error the CLI prints as one line, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tests.conftest import make_config
from dlrun import schema
from dlrun.cli import check_group_choices, main as cli_main, one_line
from dlrun.errors import UserError
from dlrun.paths import CONFIG_DIR


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "optim", "sched"])
def test_every_shipped_target_has_a_schema_that_its_yaml_satisfies(group, npz, tmp_path):
    extra = {"arrays": [f"data.path={npz(x_train=[[0.0]], y_train=[0], x_test=[[0.0]], y_test=[0])}"],
             "image_folder": [f"data.root={tmp_path}"]} if group == "data" else {}
    for name in options(group):
        cfg, _ = make_config(f"{group}={name}", *extra.get(name, []))
        assert cfg[group]._target_ in schema.TARGETS or schema.DERIVED.get(group, lambda _: None)(cfg[group]._target_), \
            f"{group}={name}: no schema for {cfg[group]._target_}"
        schema.validate(cfg)  # raises on a key or value the schema does not allow


@pytest.mark.parametrize("group", ["init", "reg", "loss", "trainer", "logger", "augment"])
def test_every_option_of_the_untargeted_groups_validates(group):
    for name in options(group):
        schema.validate(make_config(f"{group}={name}")[0])


def test_the_schemas_choices_match_what_the_builders_accept():
    from dlrun.init import ALIASES, SCHEMES
    from dlrun.losses import CLASSIFICATION, REGRESSION
    from dlrun.models.layers import ACTIVATIONS, NORMS
    from dlrun.models.resnet import CIFAR, IMAGENET
    from dlrun.models.rnn import CELLS
    from dlrun.models.vgg import CONFIGS

    assert set(schema.SCHEMES) == set(SCHEMES) | set(ALIASES)
    assert set(schema.ACTIVATIONS) == set(ACTIVATIONS) and set(schema.NORMS) == set(NORMS)
    rule = lambda cls, name: next(f for f in dataclasses.fields(cls) if f.name == name).metadata["rule"]
    assert set(rule(schema.ResNet, "depth").choices) == set(IMAGENET) | set(CIFAR)
    assert set(rule(schema.VGG, "depth").choices) == set(CONFIGS)
    assert set(rule(schema.Recurrent, "cell").choices) == set(CELLS)
    assert set(rule(schema.Loss, "name").choices) == {"auto", *CLASSIFICATION, *REGRESSION}


@pytest.mark.parametrize("overrides,message", [
    # the list: a wrong type, a bad range, a path that does not exist, an unknown key
    (["optim.lr=abc"], "optim.lr='abc' must be a number > 0"),
    (["optim.lr=0"], "optim.lr=0 must be a number > 0"),
    (["optim.lr=-0.001"], "optim.lr=-0.001 must be a number > 0"),
    (["optim.lr=nan"], "optim.lr=nan must be a number > 0"),
    (["model.dropout=1.0"], "model.dropout=1.0 must be a number in [0, 1)"),
    (["model.dropout=-0.1"], "model.dropout=-0.1 must be a number in [0, 1)"),
    (["model.dropout=[0.1,1.5]"], "model.dropout=[0.1, 1.5] must be a number in [0, 1), or a list with one per layer"),
    (["reg=dropout", "reg.dropout=1"], "reg.dropout=1 must be a number in [0, 1)"),
    (["data.batch_size=0"], "data.batch_size=0 must be an integer >= 1"),
    (["data.batch_size=abc"], "data.batch_size='abc' must be an integer >= 1"),
    (["trainer.epochs=0"], "trainer.epochs=0 must be an integer >= 1"),
    (["trainer.epochs=2.5"], "trainer.epochs=2.5 must be an integer >= 1"),
    (["data=arrays", "data.path=/no/such/file.npz"], "data.path='/no/such/file.npz': no such file or directory"),
    (["data=arrays"], "data.path is not set; pass data.path=..."),
    (["model.weights=/no/such.pt"], "model.weights='/no/such.pt': no such file or directory"),
    (["trainer.resume=/no/such/run"], "trainer.resume='/no/such/run': no such file or directory"),
    (["+optim.momentun=0.9"], "optim.momentun: unknown key for torch.optim.Adam; its keys: _target_, _partial_, lr,"),
    (["+model.hiden=[64]"], "model.hiden: unknown key for dlrun.models.mlp.MLP"),
    (["+trainer.epoch=3"], "trainer.epoch: unknown key for trainer; its keys: device, devices, sync_bn, precision,"),
    (["+lr=0.1"], "lr: unknown key at the top of the config; its groups: data, model,"),
    (["optim=adam", "optim.betas=[0.9]"], "optim.betas=[0.9] must be a list of 2 numbers in [0, 1)"),
    (["trainer.precision=64"], "trainer.precision=64 must be one of auto, 32, fp32, 16, fp16, bf16"),
    (["model=resnet", "model.depth=19"], "model.depth=19 must be one of 18, 34, 50, 101, 152, 20, 32, 44, 56, 110"),
    (["reg=early_stopping", "reg.early_stopping=3"], "reg.early_stopping=3 must be a group of settings (patience, min_delta)"),
    # a bad value inside a group of settings is named by its own key, not the group's
    (["logger.diagnostics.histograms=maybe"], "logger.diagnostics.histograms='maybe' must be true or false"),
    (["trainer.seed=-1"], "trainer.seed=-1 must be an integer in [0,"),
])
def test_each_bad_config_is_one_line_naming_key_value_and_what_is_allowed(overrides, message):
    cfg, _ = make_config(*overrides)
    with pytest.raises(UserError) as error:
        schema.validate(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_bad_config_on_the_command_line_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    earlier = tmp_path / "outputs" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text('{"kept": true}')
    monkeypatch.chdir(tmp_path)
    for override, key in (("optim.lr=abc", "optim.lr="), ("model.dropout=1.5", "model.dropout="),
                          ("data.batch_size=0", "data.batch_size="), ("+optim.foo=1", "optim.foo:")):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["train", override, "trainer.device=cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(f"dlrun train: error: {key}"), err
    assert (earlier / "summary.json").read_text() == '{"kept": true}'
    assert not list((tmp_path / "outputs").rglob("*.pt")) and not list((tmp_path / "outputs").rglob("events.*"))


# Each range lives in the schemas alone: the code that builds a run (assembly.trainer_settings,
# regularization, check_world, resolve_precision, loss_setting) reads values already checked. So
# every command that builds a trainer must refuse each of these before anything else reads it.
EVERY_REG = "reg=[l1,l2,weight_decay,maxnorm,early_stopping]"  # every reg key there, so each can be set
BAD_RUN_VALUES = [
    "trainer.grad_clip_mode=clip", "trainer.ema_decay=1", "trainer.ema_decay=0", "trainer.epochs=0",
    "trainer.max_steps=0", "trainer.grad_clip=0", "trainer.seed=-1", "trainer.stop_at_epoch=0",
    "trainer.checkpoint_every_steps=0", "trainer.micro_batch_size=0", "trainer.devices=0", "trainer.precision=64",
    "logger.every=0", "logger.ratio_every=-1", "logger.diagnostics.every=-1", "logger.diagnostics.histograms=maybe",
    "reg.l2=-1", "reg.l1=-1", "reg.weight_decay=-1", "reg.maxnorm=0", "reg.early_stopping.patience=0",
    "reg.early_stopping.min_delta=-1", "reg.exclude_bias_and_norm=maybe", "loss.label_smoothing=1",
]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    from tests.conftest import train

    run = tmp_path_factory.mktemp("saved")
    train(run, EVERY_REG, "model.hidden=[8]", "trainer.max_steps=1", "trainer.device=cpu", "logger.hparams=false")
    return run / "checkpoints" / "last.pt"


@pytest.mark.parametrize("command", ["train", "check lr", "check gradcheck", "check initial-loss", "eval"])
def test_each_bad_run_value_is_refused_in_one_line_by_every_command_that_builds_a_trainer(command, saved_run, tmp_path):
    from tests.conftest import dlrun_here

    words = command.split()
    before = [f"ckpt={saved_run}"] if command == "eval" else [EVERY_REG]  # eval: the run's own config
    for override in BAD_RUN_VALUES:
        result = dlrun_here(*words, *before, override, "trainer.device=cpu", cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        key = override.split("=")[0]
        assert result.returncode == 2 and len(lines) == 1, (override, result.stderr)
        assert lines[0].startswith(f"dlrun {words[0]}: error: {key}=") and "must be" in lines[0], (override, lines)


def test_validation_converts_what_it_accepts(tmp_path):
    cfg, _ = make_config("optim.lr=1", "optim=sgd", "data.batch_size='32'", "trainer.checkpoint=0")
    schema.validate(cfg)
    assert (cfg.optim.lr, type(cfg.optim.lr), cfg.data.batch_size, cfg.trainer.checkpoint) == (1.0, float, 32, False)


# ------------------------------------------------------------------------------------ property test

CHOICES = {"model": ["mlp", "cnn", "lenet", "rnn", "lstm", "gru", "resnet"], "optim": options("optim"),
           "sched": options("sched"), "reg": options("reg"), "init": options("init"), "loss": options("loss")}
VALUES = ["-1", "2,3", "0", "1", "2", "3", "0.5", "-0.5", "1e-3", "2.5", "1e30", "-1e30", "nan", "inf", "-inf", "abc", "null",
          "true", "false", "[]", "[1,2]", "[-1]", "[0.5,0.5]", "[abc]", "''", "{a:1}", "auto", "none", "relu", "max",
          "step", "epoch", "/no/such/path", "imagenet", "'${oops}'",
          "a" * 5000, "1" * 5000]  # no file has a name that long; Python converts at most 4300 digits


@functools.lru_cache(maxsize=None)
def leaf_keys(choices: tuple[str, ...]) -> list[str]:
    tree = OmegaConf.to_container(make_config(*choices)[0])
    keys: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            keys.append(f"{prefix}{key}")
    walk(tree, "")
    return sorted(keys)


settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@st.composite
def override_sets(draw, leave_out: tuple[str, ...] = ()) -> tuple[tuple[str, ...], list[str]]:
    """Random group choices, then 1 to 3 of their keys set to random values, sometimes an unknown key:
    (choices, overrides). Keys in `leave_out` are never drawn."""
    choices = tuple(f"{group}={draw(st.sampled_from(names))}" for group, names in CHOICES.items()
                    if draw(st.booleans()))
    keys = [key for key in leaf_keys(choices) if key not in leave_out]
    picked = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True))
    overrides = [f"{key}={draw(st.sampled_from(VALUES))}" for key in picked]
    if draw(st.booleans()):
        overrides.append(f"+{draw(st.sampled_from(['model', 'optim', 'sched', 'trainer']))}.bogus=1")
    return choices, overrides


@given(override_sets())
def test_random_overrides_never_give_a_traceback(drawn):
    from dlrun.train.assembly import build_parts, build_trainer

    choices, overrides = drawn
    logging.disable(logging.WARNING)
    try:
        check_group_choices([*choices, *overrides])  # what the CLI checks before Hydra composes
        cfg, _ = make_config(*choices, *overrides, "trainer.device=cpu")
        parts = build_parts(cfg)
        build_trainer(parts, None).writer.close()
    except UserError as exc:
        assert "\n" not in str(exc), overrides
    except (HydraException, OmegaConfBaseException) as exc:  # the CLI folds these into one line too
        assert "\n" not in one_line(exc), overrides
    finally:
        logging.disable(logging.NOTSET)
