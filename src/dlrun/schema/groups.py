"""The schemas of the data, model, init, reg and loss groups."""

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from dlrun.schema.rules import BATCH, FRACTION, SEED, setting


# ------------------------------------------------------------------------------------ data



PREPROCESS = ("none", "mean_image", "channel_mean", "channel_standardize", "pca_whiten")


@dataclass
class Batched:
    """Keys every dataset has."""

    _target_: str = MISSING
    batch_size: int = setting(64, **BATCH)
    eval_batch_size: int = setting(1024, **BATCH)
    preprocess: str = setting("channel_standardize", choices=PREPROCESS)
    on_device: Any = setting("auto", choices=("auto", True, False))


@dataclass
class DigitsData(Batched):
    val_fraction: float = setting(0.1, **FRACTION)
    test_fraction: float = setting(0.2, gt=0, lt=1)
    split_seed: int = setting(0, **SEED)


@dataclass
class ArrayData(Batched):
    path: str = setting(path=True, hint="an .npz file with x_train, y_train, x_test, y_test")
    layout: str = setting("auto", choices=("auto", "features", "signal", "image", "sequence"))
    val_fraction: float = setting(0.1, **FRACTION)
    split_seed: int = setting(0, **SEED)


@dataclass
class VisionData(Batched):
    root: str = "~/.cache/dlrun/data"
    download: bool = False
    val_fraction: float = setting(0.1, **FRACTION)
    split_seed: int = setting(0, **SEED)


@dataclass
class ImageFolder(Batched):
    root: str = setting(path=True, hint="a folder with train/ and test/ (and maybe val/), one subfolder per class")
    image_size: int = setting(32, ge=1, hint="(images are resized to image_size x image_size)")
    grayscale: bool = False
    workers: int = setting(2, ge=0)
    val_fraction: float = setting(0.1, **FRACTION)
    split_seed: int = setting(0, **SEED)


@dataclass
class Generated(Batched):
    """Sequence tasks generated from their own seed (no files)."""

    batch_size: int = setting(16, **BATCH)  # small batches: more steps for the same samples on a CPU
    eval_batch_size: int = setting(1000, **BATCH)
    preprocess: str = setting("none", choices=PREPROCESS)
    train_samples: int = setting(5000, ge=1)
    val_samples: int = setting(1000, ge=1)
    test_samples: int = setting(2000, ge=1)
    seed: int = setting(0, **SEED)


@dataclass
class AddingData(Generated):
    seq_len: int = setting(30, ge=2)


@dataclass
class CopyData(Generated):
    length: int = setting(5, ge=1)
    delay: int = setting(10, ge=0)


@dataclass
class Augment:
    crop_padding: int = setting(0, ge=0)
    flip: bool = False
    cutout: int = setting(0, ge=0)
    jitter: float = setting(0.0, ge=0, lt=1)
    mixup: float = setting(0.0, ge=0, hint="(Beta's alpha; 0: off)")
    cutmix: float = setting(0.0, ge=0, hint="(Beta's alpha; 0: off)")


@dataclass
class Eval:
    tta: str = setting("none", choices=("none", "flip"))


# ------------------------------------------------------------------------------------ models

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "softplus", "silu", "tanh", "sigmoid", "maxout")
NORMS = ("none", "batch", "layer", "group")


@dataclass
class Model:
    """Keys every model has: transfer learning (read by dlrun, not passed to the model)."""

    _target_: str = MISSING
    weights: Optional[str] = setting(None, also=("imagenet",), path=True,
                                     hint="a dlrun run directory or a .pt/.pth file")
    freeze: Any = setting("none", kind=str, many=True)  # none | backbone | [prefix, ...]


@dataclass
class Activated(Model):
    activation: str = setting("relu", choices=ACTIVATIONS)
    negative_slope: float = 0.01
    maxout_pieces: int = setting(2, ge=1)


@dataclass
class MLP(Activated):
    hidden: list[int] = setting([256, 256], ge=1)
    activation: Any = setting("relu", kind=str, many=True, choices=ACTIVATIONS)
    dropout: Any = setting(0.0, kind=float, many=True, **FRACTION)
    norm: Any = setting("none", kind=str, many=True, choices=NORMS)


@dataclass
class CNN(Activated):
    channels: list[int] = setting([32, 64], ge=1, nonempty=True)
    convs_per_block: int = setting(2, ge=1)
    kernel_size: int = setting(3, ge=1)
    stride: int = setting(1, ge=1)
    padding: int = setting(1, ge=0)
    pool: str = setting("max", choices=("max", "avg", "none"))
    pool_size: int = setting(2, ge=1)
    fc: list[int] = setting([128], ge=1)
    norm: str = setting("none", choices=NORMS)
    dropout: float = setting(0.0, **FRACTION)


@dataclass
class LeNet(Activated):
    activation: str = setting("tanh", choices=ACTIVATIONS)
    pool: str = setting("avg", choices=("avg", "max"))


@dataclass
class TorchvisionNet(Activated):
    small_input: Any = setting("auto", choices=("auto", True, False))
    norm: str = setting("batch", choices=NORMS)


@dataclass
class AlexNet(TorchvisionNet):
    dropout: float = setting(0.5, **FRACTION)
    fc_width: Optional[int] = setting(None, ge=1)


@dataclass
class VGG(TorchvisionNet):
    depth: int = setting(16, choices=(11, 13, 16, 19))
    batch_norm: bool = False
    norm: str = setting("none", choices=NORMS)
    dropout: float = setting(0.5, **FRACTION)
    fc_width: Optional[int] = setting(None, ge=1)


@dataclass
class ResNet(TorchvisionNet):
    depth: int = setting(20, choices=(18, 34, 50, 101, 152, 20, 32, 44, 56, 110))
    residual: bool = True


@dataclass
class ResNet9(Activated):
    width: int = setting(64, ge=1)
    scale: float = setting(0.125, gt=0)
    norm: str = setting("batch", choices=NORMS)


@dataclass
class GoogLeNet(TorchvisionNet):
    dropout: float = setting(0.2, **FRACTION)


@dataclass
class Recurrent(Model):
    cell: str = setting("lstm", choices=("rnn", "lstm", "gru"))
    hidden_size: int = setting(128, ge=1)
    num_layers: int = setting(1, ge=1)
    bidirectional: bool = True
    merge: str = setting("concat", choices=("concat", "sum", "mul"))
    dropout: float = setting(0.0, **FRACTION)
    readout: str = setting("last", choices=("last", "mean", "max"))
    nonlinearity: str = setting("tanh", choices=("tanh", "relu"))
    forget_bias: float = 1.0


# ------------------------------------------------------------------------------------ init, reg, loss

SCHEMES = ("default", "small_normal", "large_normal", "xavier", "xavier_uniform", "xavier_normal", "xavier_fanin",
           "he", "he_normal", "he_uniform", "lecun_normal", "orthogonal")


@dataclass
class Init:
    scheme: str = setting("default", choices=SCHEMES)
    bias: Optional[float] = None
    mode: str = setting("fan_in", choices=("fan_in", "fan_out"))
    recurrent: Optional[str] = setting(None, choices=SCHEMES)
    gain: float = setting(1.0, gt=0)


@dataclass
class EarlyStopping:
    patience: int = setting(5, ge=1, hint="(validations without improvement)")
    min_delta: float = setting(0.0, ge=0)


@dataclass
class Reg:
    dropout: Optional[float] = setting(None, **FRACTION)
    l1: Optional[float] = setting(None, ge=0)
    l2: Optional[float] = setting(None, ge=0)
    weight_decay: Optional[float] = setting(None, ge=0)
    maxnorm: Optional[float] = setting(None, gt=0)
    label_smoothing: Optional[float] = setting(None, **FRACTION)
    early_stopping: Optional[EarlyStopping] = None
    exclude_bias_and_norm: bool = True


@dataclass
class Loss:
    name: str = setting("auto", choices=("auto", "cross_entropy", "multi_margin", "mse", "huber", "bce"))
    label_smoothing: float = setting(0.0, **FRACTION)
    huber_delta: float = setting(1.0, gt=0)


