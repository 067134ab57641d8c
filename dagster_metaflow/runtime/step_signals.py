"""The signal dispositions a step process starts with, whoever starts it.

Its own module, without psutil or threads: the step zygote imports it before Metaflow, and
every step it forks carries what it imported.
"""

from __future__ import annotations

import signal

# Signals a step must receive as `python flow.py step` started from a terminal would: a run
# worker started in the background (`cmd &`, nohup, some service managers) inherits them
# ignored, and an ignored disposition survives exec, so SIGTERM would only be a SIGKILL later.
STEP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)


def default_step_signals() -> None:
    """Give the current (child) process default dispositions for STEP_SIGNALS, before exec."""
    for sig in STEP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def ignored_step_signals() -> bool:
    """Some of STEP_SIGNALS are ignored here: a child must be given the defaults."""
    return any(signal.getsignal(sig) == signal.SIG_IGN for sig in STEP_SIGNALS)
