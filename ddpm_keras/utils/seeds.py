"""Seeds: one drawn already, a fresh one, a generator restarted.

Neither training nor sampling owns them: the training steps fold a
replica's id into a drawn seed, the compiled chains draw each step's noise
from `[seed, step]`.
"""

import secrets

import keras
from keras import ops


class DrawnSeed(keras.random.SeedGenerator):
    """A seed already drawn (an int `(2,)` tensor), usable where `keras.random` takes a `SeedGenerator`.

    Each `next()` returns the seed with its second word advanced by one, as
    a `SeedGenerator` does, without a state variable.
    """

    def __init__(self, seed):  # No SeedGenerator.__init__: there is no state variable.
        self._seed = seed
        self._draws = 0

    def next(self, ordered=True):
        offset = ops.convert_to_tensor([0, self._draws], dtype=self._seed.dtype)
        self._draws += 1
        return ops.add(self._seed, offset)


def random_seed(seed):
    """`seed` as an int, or a fresh random one for `None`."""
    return secrets.randbelow(2**31 - 1) if seed is None else int(seed)


def reset_seed(seed_generator, seed):
    """Restarts `seed_generator` from `seed`, as if newly made with it."""
    seed_generator.state.assign(ops.convert_to_tensor([seed, 0], dtype=seed_generator.state.dtype))
