"""The one atomic writer: whole file or nothing, readable permissions, no temporary left."""
import os
import stat

import pytest

from l2rw_jax import workdir


def test_atomic_write_writes_whole_file_with_readable_permissions(tmp_path):
    path = str(tmp_path / "sub" / "out.txt")
    assert workdir.atomic_write(path, lambda f: f.write("a,b\n")) == path
    assert open(path).read() == "a,b\n"
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o044 == 0o044 & ~_umask()  # not mkstemp's 0600
    workdir.atomic_write(path, lambda f: f.write(b"\x00\x01"), mode="wb")
    assert open(path, "rb").read() == b"\x00\x01"
    assert os.listdir(tmp_path / "sub") == ["out.txt"]


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "out.txt")
    workdir.atomic_write(path, lambda f: f.write("old"))

    def fail(f):
        f.write("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        workdir.atomic_write(path, fail)
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    with pytest.raises(ValueError, match="mode='a'"):
        workdir.atomic_write(path, lambda f: None, mode="a")


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask
