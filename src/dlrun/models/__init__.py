"""Models. Each takes the data's `input_shape` (one sample's shape), `num_outputs` and `layout`
(features, signal, image or sequence), and adapts to them."""
