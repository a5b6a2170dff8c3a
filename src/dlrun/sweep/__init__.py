"""Random hyperparameter search: the search space (space.py) and the Hydra sweeper (sweeper.py)."""
