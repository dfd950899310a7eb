"""What mwcommsd and the INS share around their C event loops.

`LoopThread` runs an engine's blocking C loop in a thread (cffi releases the GIL for the call)
and stops it through the engine's own stop function. `serve` runs a daemon's control loop in a
thread, so that the main thread stays free to receive SIGTERM/SIGINT, and turns a failure of
that loop into exit status 1. `spin_config` turns a poll budget into an engine config value.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

__all__ = ["LoopThread", "serve", "spin_config", "SPIN_OFF", "SPIN_US_MAX"]


class LoopThread:
    """A C loop `run()` (returns 0 or -errno) in a thread; `stop_loop()` makes it return."""

    def __init__(self, name: str, run: Callable[[], int], stop_loop: Callable[[], None]):
        self.name = name
        self._run_loop, self._stop_loop = run, stop_loop
        self._thread: threading.Thread | None = None
        self._result = 0

    def _run(self) -> None:
        self._result = self._run_loop()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the loop, wait for its thread. @raise OSError when the loop failed"""
        if self._thread is None:
            return
        self._stop_loop()
        self._thread.join()
        self._thread = None
        if self._result < 0:
            raise OSError(-self._result, f"{self.name} loop: {os.strerror(-self._result)}")


def serve(run: Callable[[threading.Event], None], stop: threading.Event, name: str,
          log: logging.Logger) -> int:
    """Run `run(stop)` in a thread until it returns; the calling (main) thread only waits, so
    signal handlers that set `stop` run promptly. @return 0, or 1 when `run` raised"""
    failed: list[BaseException] = []

    def target() -> None:
        try:
            run(stop)
        except Exception as exc:            # noqa: BLE001 - reported, then exit status 1
            log.exception("%s: %s", name, exc)
            failed.append(exc)

    runner = threading.Thread(target=target, name=f"{name}-control")
    runner.start()
    while runner.is_alive():
        runner.join(0.5)
    return 1 if failed else 0


SPIN_OFF = 0xFFFFFFFF    # an engine config's spin_us that turns polling off (mwcomms/spin.h)
SPIN_US_MAX = 1000       # MW_SPIN_US_MAX of mwcomms/spin.h


def spin_config(spin_us: int | None) -> int:
    """An engine config's spin_us for a poll budget in microseconds: None takes the engine's
    default (MW_SPIN_US, else 50), 0 never polls. Raises ValueError outside 0..SPIN_US_MAX."""
    if spin_us is None:
        return 0
    if not 0 <= spin_us <= SPIN_US_MAX:
        raise ValueError(f"spin budget {spin_us} us: must be 0 (never poll) to {SPIN_US_MAX}")
    return SPIN_OFF if spin_us == 0 else spin_us
