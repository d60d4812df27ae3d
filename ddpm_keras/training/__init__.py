"""Training a `DiffusionModel` with `fit`: the per-backend steps, the labels of conditional models, callbacks."""
