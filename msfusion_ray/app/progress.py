"""What the user sees while runs go on: a progress bar on a terminal, otherwise one line whenever the count moves
(logs, CI)."""

from __future__ import annotations

import math
import sys
from typing import Any


class ProgressDisplay:
    """A progress bar on a terminal; otherwise one line whenever the count moves (logs, CI)."""

    def __init__(self, total: int, unit: str, enabled: bool, label: str = ""):
        from tqdm import tqdm

        self.enabled = enabled
        self.label = label
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True) if self.interactive else None
        self.total = total
        self.last = 0

    def update(self, done: int, postfix: dict[str, Any], force: bool = False) -> None:
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()
        elif self.enabled and (done > self.last or force):
            details = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.label}{done}/{self.total} {details}".rstrip(), file=sys.stderr, flush=True)
        self.last = done

    def note(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def round_postfix(progress: dict[str, Any]) -> dict[str, Any]:
    """What a run's progress line shows besides the step: the virtual time, the last evaluation (perplexity for a
    language model, else accuracy) and the step's outcomes."""
    accuracy, perplexity = progress.get("accuracy"), progress.get("perplexity")
    shown = {"vt": f"{progress['vt']:.1f}s"} if progress.get("vt") is not None else {}
    if perplexity is not None and math.isfinite(perplexity):
        shown["ppl"] = f"{perplexity:.2f}"
    elif accuracy is not None and math.isfinite(accuracy):
        shown["acc"] = f"{accuracy:.3f}"
    else:
        return shown
    return {**shown, "ok": progress.get("ok"), "oom": progress.get("oom")}
