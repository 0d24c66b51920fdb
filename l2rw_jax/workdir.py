"""Files a run writes: one atomic writer for every result, checkpoint side file and report.

Why one function: a reader (the audit, a resumed run, a plot script, a person) must never see
a half-written file, and three copies of this logic had grown apart (permissions, fsync,
cleanup). Orbax writes the checkpoints themselves atomically on its own.
"""
from __future__ import annotations

import os
import tempfile
from typing import IO, Any, Callable


def atomic_write(path: str, write: Callable[[IO[Any]], None], mode: str = "w",
                 newline: str | None = None) -> str:
    """Writes ``path`` through ``write(file)`` on a temporary file in the same folder, then
    ``os.replace``: the file appears whole or not at all, and a failure leaves nothing behind.

    Args:
      path: the file to write; its folder is created if missing.
      write: called once with the open temporary file.
      mode: ``"w"`` (text, UTF-8) or ``"wb"`` (binary).
      newline: passed to ``open`` in text mode (``""`` for the csv module).

    Returns:
      ``path``. The file gets the usual permissions (``0o666`` less the umask), not
      ``mkstemp``'s private ``0o600``: results are meant to be read.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r} is not supported; allowed: 'w', 'wb'.")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    text = {} if mode == "wb" else {"encoding": "utf-8", "newline": newline}
    try:
        with os.fdopen(fd, mode, **text) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
