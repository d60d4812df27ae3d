"""`StallWatchdog`: stops a multi-worker run whose steps stall, when another worker is lost."""

import math
import os
import signal
import sys
import threading
import time

import keras


class StallWatchdog(keras.callbacks.Callback):
    """Ends the process when training makes no progress for `timeout` seconds: a lost worker's bound.

    In a multi-worker run a worker whose peer died waits inside a
    collective until TensorFlow notices (seconds when the connection
    drops; up to a minute or more otherwise). From the end of the first
    step (its tracing and compilation do not count), a thread checks every
    second that a batch or an epoch began or ended within `timeout`
    seconds; if not, it prints `message` and exits with `exit_code`
    (without cleanup: the run directory holds the last finished epoch).
    The pauses between two steps (the epoch-end checkpoint, sample grids,
    FID measurements) must stay below `timeout`.

    A call can hold the interpreter while it waits (TensorFlow's eager
    collectives, as when a checkpoint reads the metrics' variables): no
    Python thread runs then. With `alarm`, `SIGALRM` at its default action
    ends the process `ALARM_MARGIN` seconds after `timeout` in that case
    (status 142 in a shell); it is re-armed at each step, from the main
    thread, and replaces any other use of `SIGALRM`.

    Args:
        timeout: Seconds without progress before the process ends.
        message: String printed on standard error first.
        exit_code: Integer, the process's exit status.
        alarm: Boolean, add the `SIGALRM` bound. Defaults to `False`.
    """

    ALARM_MARGIN = 15

    def __init__(self, timeout, message, exit_code, alarm=False):
        super().__init__()
        self.timeout, self.message, self.exit_code = float(timeout), message, int(exit_code)
        self.alarm = alarm and hasattr(signal, "alarm")
        self._last = time.monotonic()
        self._armed = False
        self._stop = threading.Event()
        self._thread = None

    def _progress(self, *args, **kwargs):
        self._last = time.monotonic()
        if self.alarm and self._armed:
            signal.alarm(math.ceil(self.timeout) + self.ALARM_MARGIN)

    on_epoch_begin = on_epoch_end = on_train_batch_begin = _progress

    def on_train_batch_end(self, batch, logs=None):
        self._armed = True
        self._progress()

    def on_train_begin(self, logs=None):
        self._armed = False
        self._progress()
        if self.alarm:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def on_train_end(self, logs=None):
        self.stop()

    def stop(self):
        """Stops watching (`fit` does not call `on_train_end` when it raises)."""
        self._stop.set()
        if self.alarm:
            signal.alarm(0)

    def _watch(self):
        while not self._stop.wait(1.0):
            if self._armed and time.monotonic() - self._last > self.timeout:
                print(self.message, file=sys.stderr, flush=True)
                os._exit(self.exit_code)
