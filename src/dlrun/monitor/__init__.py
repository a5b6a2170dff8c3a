"""What a run shows while it trains: TensorBoard scalars, update/weight ratios, a progress bar."""
