"""The bounded activations' ranges, without torch (`dlrun check --help` reads them).

Training's diagnostics and `dlrun check init` both count a unit within SATURATION_MARGIN of a
bound as saturated (for tanh: |a| > 0.99), where its local gradient is ~0.
"""

BOUNDS = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}
SATURATION_MARGIN = 0.01
