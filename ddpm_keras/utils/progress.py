"""Progress that fits where it goes: Keras's bar on a terminal or in a notebook, plain lines elsewhere.

Keras's `Progbar` redraws one line with carriage returns and colour codes;
written to a file or a CI log that becomes one long line of escape
sequences. Elsewhere than a terminal, `progress_bar` prints one plain line
per update instead (`120/1000 steps, 3.1 s`), and the caller updates it
once per segment, chunk or batch of work.
"""

import sys
import time

import keras


def interactive():
    """Whether standard output is a terminal or a notebook, where a redrawn bar is readable."""
    return getattr(sys.stdout, "isatty", lambda: False)() or in_notebook()


def in_notebook():
    """Whether this runs in a Jupyter or Colab kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_bar(target, unit_name="step"):
    """A bar with Keras's `update(current)`: `keras.utils.Progbar` when `interactive()`, else `LineProgress`."""
    if interactive():
        return keras.utils.Progbar(target, unit_name=unit_name)
    return LineProgress(target, unit_name)


class LineProgress:
    """Plain lines: how far, of how much, and the seconds since the start.

    A line at most every `interval` seconds, and one when the target is
    reached, so that fast updates do not flood a log.
    """

    def __init__(self, target, unit_name="step", interval=5.0):
        self.target, self.unit_name, self.interval = target, unit_name, interval
        self.current = 0
        self._start = self._last = time.perf_counter()

    def update(self, current, values=None, finalize=None):
        self.current = current
        now = time.perf_counter()
        if now - self._last < self.interval and current != self.target:
            return
        self._last = now
        of = "" if self.target is None else f"/{self.target}"
        print(f"{current}{of} {self.unit_name}s, {now - self._start:.1f} s", flush=True)

    def add(self, count, values=None):
        self.update(self.current + count)
