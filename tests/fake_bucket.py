"""``gs://`` paths redirected to a local folder through etils' own test double
(``etils.epath.testing.mock_epath``): what goes through ``epath`` lands under ``root``, what
does not (``open``, ``os.path``) would create ``<cwd>/gs:/...`` or fail, which the tests see.

etils sends ``gs://`` to its TensorFlow backend whenever TensorFlow is installed, bypassing the
mock, unless ``EPATH_USE_TF=false`` was set before the process's first path operation (the
choice is cached): tests/conftest.py sets it, and :func:`fake_gs` checks that the mock is used.
"""

from __future__ import annotations

import contextlib
import os

from etils import epath
from etils.epath import testing as epath_testing

PREFIX = "gs://"


@contextlib.contextmanager
def fake_gs(root: str):
    """Inside, ``epath.Path("gs://b/x")`` reads and writes ``<root>/b/x``."""
    root = os.path.abspath(root)

    def local(p) -> str:
        s = os.fspath(p)
        return os.path.join(root, s[len(PREFIX) :]) if s.startswith(PREFIX) else s

    def remote(p: str) -> str:  # glob and walk answer with local paths: back to gs://.
        return PREFIX + os.path.relpath(p, root) if p.startswith(root + os.sep) else p

    def one(fn, p, *args, **kwargs):
        return fn(local(p), *args, **kwargs)

    def two(fn, p, dst, *args, **kwargs):
        return fn(local(p), local(dst), *args, **kwargs)

    def glob(fn, pattern):
        return [remote(p) for p in fn(local(pattern))]

    def walk(fn, top, **kwargs):
        for folder, dirs, files in fn(local(top), **kwargs):
            yield remote(folder), dirs, files

    with epath_testing.mock_epath(
        copy=two,
        exists=one,
        glob=glob,
        isdir=one,
        listdir=one,
        makedirs=one,
        mkdir=one,
        open=one,
        remove=one,
        rename=two,
        replace=two,
        rmtree=one,
        stat=one,
        walk=walk,
    ):
        if type(epath.Path(PREFIX + "b")._backend).__name__ != "_MockBackend":
            raise RuntimeError(
                "gs:// is not faked: set EPATH_USE_TF=false before the process's "
                "first epath call (etils sends gs:// to tf.io.gfile otherwise)."
            )
        yield
