"""Where things are: the config tree (inside the installed wheel, or beside src/ in a checkout), and the names of a run's checkpoint files."""

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "configs")

# A run directory's checkpoint files (dlrun.checkpoint.CheckpointSaver writes them): named here only.
CHECKPOINTS, LAST, PREVIOUS, BEST = "checkpoints", "last.pt", "previous.pt", "best.pt"
