"""Child processes started by tests (workers, servers)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence


def stop_all(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every process still running, then wait; kill those that outlast ``timeout``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
