"""The one exception type for mistakes a user can fix (a bad path, shape or value)."""


class UserError(Exception):
    """A problem in what the user asked for. The CLI prints its message as one line and exits 2.

    The message names the problem and the fix, e.g.
    "data.path: no file 'x.npz'; pass data.path=/path/to/file.npz".
    """
