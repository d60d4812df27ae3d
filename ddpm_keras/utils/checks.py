"""Argument checks shared by every layer of the package; they raise `ValueError` naming the value."""

import math
import numbers

# The seeds the samplers and the data pipeline take: what fits a signed 32-bit integer, from 0.
SEED_LIMIT = 2**31


def is_int(value):
    """Whether `value` is an integer (Python or NumPy), and not a boolean."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name, value):
    """`value` as an `int`, or a `ValueError` saying `name` must be a positive integer."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return int(value)


def image_size(img_size):
    """`img_size` (an integer or a `(height, width)` pair) as a `(height, width)` tuple of ints."""
    if is_int(img_size):
        sizes = (img_size, img_size)
    elif isinstance(img_size, (tuple, list)) and len(img_size) == 2:
        sizes = tuple(img_size)
    else:
        sizes = ()
    if len(sizes) != 2 or not all(is_int(s) and s > 0 for s in sizes):
        raise ValueError(
            "img_size must be a positive integer or a (height, width) pair of "
            f"positive integers. Received: img_size={img_size!r}"
        )
    return int(sizes[0]), int(sizes[1])


def check_seed(name, value, allow_none=True):
    """`value` as an `int` in `[0, 2**31)` (or `None` where allowed), or a `ValueError` naming `name`."""
    if value is None and allow_none:
        return None
    if not is_int(value) or not 0 <= value < SEED_LIMIT:
        raise ValueError(
            f"{name} must be {'None or ' if allow_none else ''}an integer in [0, {SEED_LIMIT - 1}]. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def check_number(name, value, low=None, high=None, low_open=False, high_open=False):
    """`value` as a finite `float` in the range, or a `ValueError` naming `name` and the range in words."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not in_range(number, low, high, low_open, high_open):
        raise ValueError(
            f"{name} must be {describe_range(low, high, low_open, high_open)}. Received: {name}={value!r}"
        )
    return number


def in_range(value, low=None, high=None, low_open=False, high_open=False):
    """Whether `value` is a finite number within the range (closed ends unless `*_open`)."""
    if not math.isfinite(value):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    if high is not None and (value >= high if high_open else value > high):
        return False
    return True


def describe_range(low=None, high=None, low_open=False, high_open=False):
    """`"a finite number > 0"`, `"a number in [0, 1)"`: a range in words that hold for all its values."""
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def shorten(value):
    """`repr(value)`, cut to 60 characters: a received value in a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
