"""Files that appear whole or not at all, local or at a URI (``gs://``): :func:`atomic_write`.

Why a module of its own, at the bottom: the run's workdir (:mod:`l2rw_jax.workdir`), the data
(``array_source.save_arrays``) and the audit's reports all write files a reader must never see half
written, and one writer keeps them alike (permissions, fsync, cleanup); the data must not import
the workdir to get it.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import IO, Any, Callable

from etils import epath

PathLike = str | os.PathLike


def is_remote(p: PathLike) -> bool:
    """True for a URI (``gs://``, ``s3://``...), False for a local path."""
    return "://" in os.fspath(p)


def atomic_write(
    p: PathLike, write: Callable[[IO[Any]], None], mode: str = "w", newline: str | None = None
) -> str:
    """Writes ``p`` through ``write(file)`` so that it appears whole or not at all.

    Local: on a temporary file in the same folder, fsync, then ``os.replace``; a failure
    leaves nothing behind. URIs (``gs://``): ``write`` fills a buffer uploaded as one object
    (an object store shows an object only once its upload completes).

    Args:
      p: the file to write; its folder is created if missing.
      write: called once with the open (temporary) file.
      mode: ``"w"`` (text, UTF-8) or ``"wb"`` (binary).
      newline: passed to ``open`` in text mode (``""`` for the csv module).

    Returns:
      ``p`` as a string. A local file gets the usual permissions (``0o666`` less the umask),
      not ``mkstemp``'s private ``0o600``: results are meant to be read.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r} is not supported; allowed: 'w', 'wb'.")
    if is_remote(p):
        target = epath.Path(os.fspath(p))
        buf = io.BytesIO() if mode == "wb" else io.StringIO(newline=newline)
        write(buf)
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "wb":
            target.write_bytes(buf.getvalue())
        else:
            target.write_text(buf.getvalue(), encoding="utf-8")
        return os.fspath(p)
    p = os.fspath(p)
    folder = os.path.dirname(os.path.abspath(p))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(p) + ".")
    text = {} if mode == "wb" else {"encoding": "utf-8", "newline": newline}
    try:
        with os.fdopen(fd, mode, **text) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return p
