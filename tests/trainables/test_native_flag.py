"""The compiled dense pass of the lean tracker: built into the cache on first use, atomically,
and absent (the numpy pass instead) where no C compiler works."""

from __future__ import annotations

import numpy as np

from signlock.trainables import _native_flag as native_flag
from signlock.trainables._lean_kernel import codes_numpy


def test_builds_into_the_cache_and_flags_exactly_the_changed_codes(monkeypatch, tmp_path):
    monkeypatch.setenv("SIGNLOCK_CACHE", str(tmp_path))
    library = native_flag.load.__wrapped__()
    assert library is not None
    assert [p.suffix for p in (tmp_path / "native").iterdir()] == [".so"]  # no temporary left
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal(1000) * 2e-3).astype(dtype)
        x[[3, 500]] = np.nan, -0.0
        stored = codes_numpy(rng.permutation(x), 1e-4, 1e-3)
        flagger = native_flag.NativeFlagger(library, 1000)
        positions, codes = flagger.flag(x, stored, 1e-4, 1e-3, offset=7)
        changed = np.flatnonzero((codes_numpy(x, 1e-4, 1e-3) ^ stored) & 7)
        assert positions.tolist() == (changed + 7).tolist()
        assert codes.tolist() == codes_numpy(x[changed], 1e-4, 1e-3).tolist()


def test_without_a_compiler_there_is_no_library(monkeypatch, tmp_path):
    monkeypatch.setenv("SIGNLOCK_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    assert native_flag.load.__wrapped__() is None
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    assert native_flag.load.__wrapped__() is None
    assert not list((tmp_path / "native").glob("*.so"))
