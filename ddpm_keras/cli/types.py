"""The value types of the command line's options: each refuses a bad value in one line naming the option.

argparse prints `ddpm-keras COMMAND: error: argument --OPTION: ...` and
exits with status 2, so every message here says what the option takes in
words that hold for every value it accepts.
"""

import argparse

from ddpm_keras.utils.checks import SEED_LIMIT
from ddpm_keras.utils.checks import describe_range
from ddpm_keras.utils.checks import in_range


def positive_int(text):
    return _bounded_int(text, 1, "a positive integer")


def non_negative_int(text):
    return _bounded_int(text, 0, "an integer >= 0")


def seed(text):
    value = _bounded_int(text, 0, f"an integer in [0, {SEED_LIMIT - 1}]")
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_LIMIT - 1}], got {value}")
    return value


def _bounded_int(text, low, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def number(low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite float in the given range, stated in words in its error."""
    what = describe_range(low, high, low_open, high_open)

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not in_range(value, low, high, low_open, high_open):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = "number"  # argparse names the type in "invalid number value"
    return parse


positive_float = number(low=0.0, low_open=True)
non_negative_float = number(low=0.0)
probability = number(low=0.0, high=1.0)
