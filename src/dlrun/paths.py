"""Where the config tree is: inside the installed wheel, or beside src/ in a checkout."""

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2] / "configs")
