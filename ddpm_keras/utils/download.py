"""Fail-fast checks before a download: is the server reachable at all?

Download helpers (tfds, `keras.utils.get_file`) retry for minutes when there
is no network. A HEAD request with a few-second timeout tells at once.
"""

import os
import ssl
import urllib.error
import urllib.parse
import urllib.request

PROBE_TIMEOUT_S = 5.0


def probe_host(url, timeout=PROBE_TIMEOUT_S):
    """Returns `None` if `url`'s server answers, else a one-line reason.

    Goes through `urllib`, which honours the `HTTPS_PROXY` variables as
    `requests` does.
    """
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # The server answered, if only with an error status.
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLError):
            # The server answered; the downloader may trust it where the
            # system's certificates do not, so let it try.
            return None
        host = urllib.parse.urlsplit(url).hostname
        return f"{host}: {one_line(reason)}"


def one_line(error):
    """The first line of an error's message, at most 200 characters."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    line = lines[0]
    return line if len(line) <= 200 else line[:197] + "..."


def keras_home():
    """Keras's cache folder: `$KERAS_HOME`, or `~/.keras`."""
    return os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
