"""Structured-config schemas: every group's keys, their types and the values they allow.

`validate(cfg)` runs before any data is read. Each group's node is merged into its schema (an
OmegaConf structured config, so OmegaConf does the type conversion), then every field's range,
choices and path are checked. A wrong type, an unknown key, a value out of range or a missing file
ends in one line that names the key, the value and what is allowed:

    optim.lr=0.0 must be a number > 0
    model.hiden: unknown key for dlrun.models.mlp.MLP; its keys: hidden, activation, ...

A group with a `_target_` has one schema per target class (SGD's keys are not Adam's); an
optimizer's or a schedule's comes from its class's signature. A target dlrun has no schema for (a
user's own class in a new YAML file) gets its keys passed through unchecked, as Hydra would; its
constructor is the judge (a schedule's interval and warmup_steps, dlrun's own, are still checked).
"""


from omegaconf import DictConfig

from dlrun.errors import UserError
from dlrun.schema.rules import (  # noqa: F401
    BATCH, FRACTION, Rule, SEED, _shown, check_node, describe, setting,
)
from dlrun.schema.groups import (  # noqa: F401
    ACTIVATIONS, Activated, AddingData, AlexNet, ArrayData, Augment, Batched, CNN, CopyData, DigitsData,
    EarlyStopping, Eval, Generated, GoogLeNet, ImageFolder, Init, LeNet, Loss, MLP, Model, NORMS,
    PREPROCESS, Recurrent, Reg, ResNet, ResNet9, SCHEMES, TorchvisionNet, VGG, VisionData,
)
from dlrun.schema.recipe import (  # noqa: F401
    LR, OPTIM_RULES, RUN_LENGTH, SCHED_RULES, Schedule, optimizer_schema, schedule_schema, signature_schema,
)
from dlrun.schema.runs import COMPILE_MODES, CheckOptions, Diagnostics, Logger, Sweep, Trainer  # noqa: F401


# ------------------------------------------------------------------------------------ validate

# Targeted groups: one schema per class. A target not listed here is a user's own class.
TARGETS: dict[str, type] = {
    "dlrun.data.digits.DigitsData": DigitsData, "dlrun.data.arrays.ArrayData": ArrayData,
    **{f"dlrun.data.vision.{name}": VisionData for name in ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "SVHN")},
    "dlrun.data.folder.ImageFolderData": ImageFolder, "dlrun.data.sequences.DigitsRowsData": DigitsData,
    "dlrun.data.sequences.AddingData": AddingData, "dlrun.data.sequences.CopyData": CopyData,
    "dlrun.models.mlp.MLP": MLP, "dlrun.models.cnn.CNN": CNN, "dlrun.models.lenet.LeNet": LeNet,
    "dlrun.models.alexnet.alexnet": AlexNet, "dlrun.models.vgg.vgg": VGG, "dlrun.models.resnet.resnet": ResNet,
    "dlrun.models.resnet9.resnet9": ResNet9,
    "dlrun.models.googlenet.googlenet": GoogLeNet, "dlrun.models.rnn.Recurrent": Recurrent,
}
# Optimizers and schedules have theirs from their signatures: optimizer_schema, schedule_schema.
DERIVED = {"optim": optimizer_schema, "sched": schedule_schema}
EXAMPLES = {"data": "dlrun.data.digits.DigitsData", "model": "dlrun.models.mlp.MLP", "optim": "torch.optim.Adam",
            "sched": "torch.optim.lr_scheduler.CosineAnnealingLR"}
# Groups without a target: one schema each.
GROUPS: dict[str, type | None] = {"data": None, "model": None, "init": Init, "reg": Reg, "loss": Loss,
                                  "optim": None, "sched": None, "trainer": Trainer, "logger": Logger,
                                  "check": CheckOptions, "sweep": Sweep, "augment": Augment, "eval": Eval,
                                  "callbacks": None}
# Groups a config may lack: check and sweep (set by `dlrun check` and sweep=random), augment and eval
# (a checkpoint's config from before they existed: both off).
OPTIONAL = ("check", "sweep", "augment", "eval", "callbacks")


def validate(cfg: DictConfig) -> None:
    """Check every group of the composed config against its schema; UserError (one line) on the first problem."""
    for key in cfg:
        if key not in GROUPS:
            raise UserError(f"{key}: unknown key at the top of the config; its groups: {', '.join(GROUPS)}")
    for group, schema in GROUPS.items():
        if group in OPTIONAL and cfg.get(group) is None:
            continue
        if cfg.get(group) is None:
            raise UserError(f"{group} is missing from the config; choose one with {group}=NAME "
                            f"(dlrun train --help lists them)")
        node = cfg[group]
        if group == "callbacks":  # {name: {_target_: ...}}: each a user's class (dlrun.train.callbacks)
            for name, entry in node.items():
                if entry is not None and not (isinstance(entry, DictConfig) and isinstance(entry.get("_target_"), str)):
                    raise UserError(f"callbacks.{name} must name a class: callbacks.{name}._target_=mypkg.MyCallback")
            continue
        if schema is not None:
            check_node(node, schema, f"{group}.", f"{group}")
            continue
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not isinstance(target, str) or not target:
            raise UserError(f"{group}._target_={_shown(target)!r} must name a class by its dotted path, "
                            f"e.g. {EXAMPLES[group]}")
        schema = TARGETS.get(target) or (DERIVED[group](target) if group in DERIVED else None)
        if schema is not None:
            check_node(node, schema, f"{group}.", target)
            continue
        if not isinstance(node.get("_partial_", False), bool):
            raise UserError(f"{group}._partial_={_shown(node.get('_partial_'))!r} must be true or false")
        if group == "sched":  # a user's own class takes what it takes, but dlrun reads these keys itself
            check_node({k: v for k, v in node.items() if k in Schedule.__dataclass_fields__}, Schedule,
                       "sched.", target)

