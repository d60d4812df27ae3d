"""Argument checks shared by every layer of the package; they raise `ValueError` naming the value."""

import numbers


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
