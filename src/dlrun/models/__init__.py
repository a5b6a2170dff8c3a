"""Models: dlrun's zoo, and the contract a user's own model class meets.

A model is an `nn.Module` class (or a function returning one) named by `model._target_`. dlrun
calls it with its config's keys and, only where its constructor asks for them by name, the data's
`input_shape` (one sample's shape), `num_outputs` (classes or regression targets) and `layout`
(features, signal, image or sequence). The zoo's classes take all three and adapt to them.

dlrun reads back: the parameters (`init=` picks gains from the module types), the last
`nn.Linear` as the head (`model.freeze=backbone`, `model.weights` with another class count), and a
`dropout` argument, which `reg=dropout` sets. See dlrun.build.user_model_node and the README's
"Extending dlrun".
"""
