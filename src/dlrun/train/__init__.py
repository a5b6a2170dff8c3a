"""The training loop, its checkpoints and the `dlrun train` Hydra app."""
