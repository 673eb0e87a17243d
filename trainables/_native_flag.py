"""The lean tracker's dense pass on CPU, compiled (private).

One C loop per chunk reads each weight where it lies and its stored state byte, and writes out
only the scalars whose observation code changed (position and new code); see
:mod:`signlock.trainables._lean_kernel` for the code and why that is all the dense pass needs.
It replaces the ten numpy passes of :class:`~signlock.trainables._lean_kernel.CodeScratch` with
one, so the lean layout is not slower than the flat one on CPU (BENCHMARKS.md).

The C source below is compiled once per machine with the system C compiler (``$CC``, else
``cc``/``gcc``; plain ``-O3``, no ``-ffast-math`` so NaN compares as the numpy path does) into
``$SIGNLOCK_CACHE/native`` (default ``~/.cache/signlock/native``), named by the hash of source,
compiler and flags, written to a temporary file and renamed into place so concurrent trials
never load a half-written library. Without a compiler :func:`load` returns None and the tracker
uses the numpy pass; results are identical either way.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

C_SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* code of one value (bit 0 [w < 0], bit 1 [|w| > eps], bit 2 [|w| < rho]; NaN: 0) */
#define CODE(v, a) ((((v) < 0) | (((a) > eps) << 1) | (((a) < rho) << 2)))
#define BLOCK 32

/* A vectorisable test per block of 32 scalars; only a block with a changed code is scanned
   again, storing every scalar at the next free slot and advancing past the changed ones. */
#define FLAG(NAME, T, ABS)                                                              \
int64_t NAME(const T *x, const uint8_t *state, int32_t n, T eps, T rho,               \
             int32_t *positions, uint8_t *codes) {                                    \
    int32_t m = 0, i = 0;                                                              \
    for (; i + BLOCK <= n; i += BLOCK) {                                               \
        int32_t any = 0;                                                               \
        for (int j = 0; j < BLOCK; j++) {                                              \
            T v = x[i + j], a = ABS(v);                                                \
            any |= (CODE(v, a) ^ (int32_t)state[i + j]) & 7;                           \
        }                                                                              \
        if (!any) continue;                                                            \
        for (int j = 0; j < BLOCK; j++) {                                              \
            T v = x[i + j], a = ABS(v);                                                \
            uint8_t code = (uint8_t)CODE(v, a);                                        \
            positions[m] = i + j;                                                      \
            codes[m] = code;                                                           \
            m += ((code ^ state[i + j]) & 7) != 0;                                     \
        }                                                                              \
    }                                                                                  \
    for (; i < n; i++) {                                                               \
        T v = x[i], a = ABS(v);                                                        \
        uint8_t code = (uint8_t)CODE(v, a);                                            \
        positions[m] = i;                                                              \
        codes[m] = code;                                                               \
        m += ((code ^ state[i]) & 7) != 0;                                             \
    }                                                                                  \
    return m;                                                                          \
}

FLAG(signlock_flag_f32, float, fabsf)
FLAG(signlock_flag_f64, double, fabs)
"""
FLAGS = ("-O3", "-shared", "-fPIC")
_POINTER = ctypes.c_void_p
_SIGNATURES = {
    np.float32: ("signlock_flag_f32", ctypes.c_float),
    np.float64: ("signlock_flag_f64", ctypes.c_double),
}


def _compiler() -> str | None:
    named = os.environ.get("CC")
    if named:
        return shutil.which(named)
    return shutil.which("cc") or shutil.which("gcc")


def _cache_folder() -> Path:
    root = os.environ.get("SIGNLOCK_CACHE") or "~/.cache/signlock"
    return Path(root).expanduser() / "native"


def _library_path(compiler: str) -> Path:
    key = "\0".join([C_SOURCE, compiler, *FLAGS, platform.machine(), platform.system()])
    return _cache_folder() / f"flag-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _compile(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        source = Path(work) / "flag.c"
        source.write_text(C_SOURCE)
        built = Path(work) / target.name
        subprocess.run(
            [compiler, *FLAGS, "-o", str(built), str(source)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(built, target)  # atomic: a concurrent loader sees the whole file or none


class NativeFlagger:
    """The compiled dense pass, with output buffers for up to ``size`` scalars per call (int32
    index in the chunk and uint8 code: 5 bytes per scalar of the largest chunk)."""

    def __init__(self, library: ctypes.CDLL, size: int) -> None:
        self.functions = {}
        for dtype, (name, scalar) in _SIGNATURES.items():
            function = getattr(library, name)
            function.restype = ctypes.c_int64
            function.argtypes = [_POINTER, _POINTER, ctypes.c_int32, scalar, scalar,
                                 _POINTER, _POINTER]  # fmt: skip
            self.functions[np.dtype(dtype)] = function
        # torch-allocated (numpy views of them), so torch's allocation trackers see them
        self.buffers = [torch.empty(size, dtype=torch.int32), torch.empty(size, dtype=torch.uint8)]
        self.positions, self.codes = (buffer.numpy() for buffer in self.buffers)

    def bind(
        self, x: np.ndarray, stored: np.ndarray, eps: float, rho: float, offset: int
    ) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        """A call that flags the scalars of ``x`` (at most 2³¹ − 1) whose code differs from the
        code bits of ``stored`` and returns (offset + index, new code) of each. ``x`` and
        ``stored`` must stay where they are (the tracked tensors are updated in place), so
        their addresses are converted once."""
        if x.size > self.positions.size or stored.size != x.size or x.dtype not in self.functions:
            raise ValueError(f"{x.size} {x.dtype} scalars for a flagger of {self.positions.size}")
        if not (x.flags.c_contiguous and stored.flags.c_contiguous):
            raise ValueError("the native dense pass needs contiguous chunks")
        function = self.functions[x.dtype]
        scalar = function.argtypes[3]
        args = (
            ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(stored.ctypes.data),
            ctypes.c_int32(x.size), scalar(eps), scalar(rho),
            ctypes.c_void_p(self.positions.ctypes.data), ctypes.c_void_p(self.codes.ctypes.data),
        )  # fmt: skip

        def flag() -> tuple[np.ndarray, np.ndarray]:
            found = function(*args)
            positions = self.positions[:found].astype(np.int64)
            positions += offset
            return positions, self.codes[:found].copy()

        return flag

    def flag(
        self, x: np.ndarray, stored: np.ndarray, eps: float, rho: float, offset: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`bind` and call once."""
        return self.bind(x, stored, eps, rho, offset)()

    def nbytes(self) -> int:
        return self.positions.nbytes + self.codes.nbytes


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled library (built on first use), or None where no C compiler works."""
    compiler = _compiler()
    if compiler is None:
        return None
    target = _library_path(compiler)
    try:
        if not target.exists():
            _compile(compiler, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
