"""What a run tells its user: `announce(message)`, a milestone printed once (by process 0) and logged everywhere.

Every process logs (each host's log then holds the whole story), only process 0 prints, so a pod's console shows
each milestone once.
"""

from __future__ import annotations

import jax
from absl import logging


def announce(message: str) -> None:
    """A milestone for the console (process 0) and the log (every process)."""
    logging.info(message)
    if jax.process_index() == 0:
        print(message, flush=True)
