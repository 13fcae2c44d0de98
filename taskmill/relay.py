"""The coordinator's and its workers' output, copied into this process's ``sys.stdout``/``sys.stderr``.

The coordinator is started with pipes for its stdout and stderr (its workers
inherit them), and one thread per pipe writes what arrives to the host's
``sys.stdout`` or ``sys.stderr`` *as they are at that moment*. So a progress bar
drawn here (rich redirects both while it is live) keeps task prints and log
lines above it instead of being torn by them, and pytest's capture, a
redirected ``sys.stderr`` or a notebook see them too. Text is decoded as UTF-8
(bad bytes replaced) as it comes; partial lines go through as they are.
Whoever swaps ``sys.stdout``/``sys.stderr`` (the bar, starting or stopping)
holds :data:`SWAPPING`, so a copy never writes to a stream that was swapped
out between looking it up and writing to it (that tore the bar's first line).
Imports the standard library only.
"""

from __future__ import annotations

import codecs
import os
import sys
import threading
from typing import IO

__all__ = ["SWAPPING", "OutputRelay"]

#: Held while a copy looks up its target stream and writes to it, and by the
#: code that redirects ``sys.stdout``/``sys.stderr`` while it does.
SWAPPING = threading.Lock()


class OutputRelay:
    """Copies two pipes' read ends (stdout's, stderr's) to ``sys.stdout`` and ``sys.stderr``."""

    def __init__(self, out: IO[bytes], err: IO[bytes]) -> None:
        self._threads = [threading.Thread(target=self._copy, args=(f, name), daemon=True,
                                          name=f"taskmill-relay-{name}") for f, name in ((out, "stdout"),
                                                                                        (err, "stderr"))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _copy(source: IO[bytes], name: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = source.fileno()
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                text = decoder.decode(data, final=not data)
                if text:
                    with SWAPPING:
                        target = getattr(sys, name, None)
                        try:
                            if target is not None:
                                target.write(text)
                                target.flush()
                        except (OSError, ValueError):  # closed or broken: the output has nowhere to go
                            pass
                if not data:
                    return
        finally:
            source.close()

    def join(self, timeout: float) -> None:
        """Wait (bounded) until both pipes reached their end: everything written has been copied."""
        for t in self._threads:
            t.join(timeout)
