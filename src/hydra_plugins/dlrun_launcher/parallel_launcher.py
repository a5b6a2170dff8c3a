"""Hydra accepts launchers only from the hydra_plugins namespace package: this is dlrun's, by name.
The work is in dlrun.sweep.launcher."""

from dlrun.sweep.launcher import ParallelLauncher as _ParallelLauncher


class ParallelLauncher(_ParallelLauncher):
    pass
