"""The stand-ins' decision logs: append-only JSON lines that the audit stage reads.

One line per decision (a token issued or refused, a key operation allowed or denied), each with the
time it was made; the writer is thread-safe within one service process.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class DecisionLog:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def record(self, **entry: Any) -> None:
        line = json.dumps({"time": time.time(), **entry}, sort_keys=True)
        with self._lock, self._path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
