"""Hydra finds sweepers only in the hydra_plugins namespace package: this is dlrun's, by name.
The work is in dlrun.sweep.sweeper."""

from dlrun.sweep.sweeper import SearchSweeper as _SearchSweeper


class SearchSweeper(_SearchSweeper):
    pass
