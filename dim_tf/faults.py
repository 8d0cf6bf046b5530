"""Deterministic fault injection, for the reliability tests (docs/reliability.md).

Code that must survive a crash at a given moment calls `kill_point("name")`
there. Normally that is one dictionary lookup. With the environment variable
`DIM_TF_KILL_AT=name` (or `name@N`) set, the process kills itself with SIGKILL
the first (or N-th) time it reaches that point: no handler, no cleanup, no
flushed buffers, exactly like `kill -9` or a machine losing power, but at a
moment a test can choose. `DIM_TF_KILL_SIGNAL=SIGTERM` sends a SIGTERM instead:
a preemption notice, arriving at a chosen step.
"""

from __future__ import annotations

import collections
import os
import signal

KILL_AT_VARIABLE = "DIM_TF_KILL_AT"
KILL_SIGNAL_VARIABLE = "DIM_TF_KILL_SIGNAL"

_reached: collections.Counter = collections.Counter()


def kill_point(name: str) -> None:
    """SIGKILLs this process (or sends `DIM_TF_KILL_SIGNAL`) if `DIM_TF_KILL_AT` names
    this point (see the module docstring)."""
    spec = os.environ.get(KILL_AT_VARIABLE)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.Signals[os.environ.get(KILL_SIGNAL_VARIABLE, "SIGKILL")])
