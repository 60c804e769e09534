"""A progress bar on stderr, for downloads and training epochs."""
import sys
import time


class Progress:
    """A progress bar on stderr: tqdm when installed, else a plain one-line bar.
    `unit="B"` shows bytes (scaled); `postfix(text)` adds e.g. the running loss."""

    def __init__(self, total, desc, unit="B", enabled=True):
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.enabled, self._bar, self._last, self._start, self._postfix = enabled, None, 0.0, time.monotonic(), ""
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total or None, desc=desc, unit=unit, unit_scale=unit == "B", leave=False,
                         mininterval=0.5)

    def update(self, n):
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last > 0.25:
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            amount = f"{self.done / 1e6:.1f} MB" if self.unit == "B" else f"{self.done} {self.unit}"
            speed = f"{rate / 1e6:.1f} MB/s" if self.unit == "B" else f"{rate:.0f} {self.unit}/s"
            if self.total:
                frac = min(self.done / self.total, 1.0)
                line = f"{self.desc} [{'#' * int(30 * frac):<30}] {100 * frac:5.1f}% {speed}"
            else:
                line = f"{self.desc} {amount} {speed}"
            sys.stderr.write(f"\r{line} {self._postfix}")
            sys.stderr.flush()

    def postfix(self, text: str):
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\r" + " " * 79 + "\r")
            sys.stderr.flush()
