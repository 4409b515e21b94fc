"""Training progress on the driver's terminal: one line per interval with step, loss, samples/s, lr and ETA."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass


def say(message: str) -> None:
    """Print one line from a Ray Train worker."""
    # Ray Train patches print() on its workers to log through Ray *and* print, which shows every
    # line twice on the driver; writing to stdout directly shows it once.
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


@dataclass
class Progress:
    """A progress line at a steady interval: step, loss, samples/s, learning rate, ETA."""

    total: int
    every_s: float
    start_step: int
    samples_per_step: int
    started: float = 0.0
    last: float = 0.0
    last_step: int = 0

    def __post_init__(self):
        self.started = self.last = time.monotonic()
        self.last_step = self.start_step

    def maybe_print(self, step: int, loss: float, lr: float) -> None:
        """samples/s is over the interval since the last line (checkpoints and evaluations included)."""
        now = time.monotonic()
        if now - self.last < self.every_s and step != self.total:
            return
        samples_per_s = (step - self.last_step) * self.samples_per_step / max(now - self.last, 1e-9)
        steps_per_s = (step - self.start_step) / max(now - self.started, 1e-9)
        self.last, self.last_step = now, step
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        say(f"step {step}/{self.total} loss {loss:.4f} samples/s {samples_per_s:.1f} lr {lr:.2e} eta {eta_text}")
