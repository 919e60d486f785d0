"""Plans that worked, remembered per goal (a JSON file in the store) and offered first next time."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


class PlanMemory:
    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._plans: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self._plans = {g: p for g, p in data.items() if isinstance(p, dict) and isinstance(p.get("steps"), list)}
            except (OSError, ValueError):
                self._plans = {}  # a damaged cache is only a cache: rebuild plans

    def lookup(self, goal: str) -> list[str] | None:
        entry = self._plans.get(goal)
        return list(entry["steps"]) if entry else None

    def record(self, goal: str, steps: list[str]) -> None:
        entry = self._plans.get(goal)
        if entry and entry["steps"] == list(steps):
            entry["successes"] += 1
        else:
            entry = {"steps": list(steps), "successes": 1}
        entry["last"] = time.time()
        self._plans[goal] = entry
        self._save()

    def forget(self, goal: str) -> None:
        if self._plans.pop(goal, None) is not None:
            self._save()

    def _save(self) -> None:
        if self.path is None or not self.path.parent.is_dir():
            return  # no store yet (nothing was edited): do not create one just for plans
        try:
            # `.*.tmp`: what a crash leaves here is an orphan the next writer open of the store removes
            fd, tmp = tempfile.mkstemp(prefix=".plans.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(self._plans, f, indent=1)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only store still answers; it just does not learn plans
