"""Models. Each takes `input_shape` (one sample's shape) and `num_outputs` from the data."""
