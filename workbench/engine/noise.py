"""The secret Gaussian noise of DP-SGD: float64 N(0, 1) draws, made from a cipher's keystream, ahead of the step.

Version 3 (``KeystreamNoise(version=3)``, every new run since issue 29's fused loop) is version 2's construction,
below, word for word, with two differences: the log is fdlibm's (``log_ieee``: Sun's e_log.c, additions,
multiplications and one division in a fixed order, within 1 ulp of ln), not numpy's, and everything after the
keystream (words -> uniforms -> s -> accept/reject replacement -> log, division, sqrt -> the sum of four) is one
loop compiled by numba (``_fused_chunk``: no fastmath, so no reassociation and no fused multiply-add; its values are
those of the numpy passes of ``numpy_chunk``, bit for bit, tested on many chunks). Its chunk keys are labelled
"workbench/noise-v3/" and its noise key is derived as "gaussian-noise-v3". Why a new version rather than a faster
version 2: numpy's float64 log is its SIMD (SVML) log on AVX-512 machines, which differs from the math library's in
the last bit of ~0.3 % of values, and a compiled loop cannot reproduce it; fdlibm's log in IEEE operations gives the
same bits on every IEEE-754 machine, which version 2's log does not (its stored runs replay on machines like theirs).
The loop releases the GIL (nogil), so the background threads and the training thread run at once. numba compiles it
at the first chunk of a process (about 1-2 s) or loads it from its cache (``cache=True``, about 0.5 s).

Version 2 (``KeystreamNoise(version=2)``, runs of issue 29 before the fused loop). Step t's noise is a vector of standard normals cut into
chunks of ``CHUNK`` values; chunk c is computed from its own keystream:

    noise key --HMAC-SHA256("workbench/noise-v2/" || t || c)--> chunk key --ChaCha20 (OpenSSL)--> 64-bit words
    words -> 53-bit uniforms on (-1, 1) -> polar method (float64) -> each value = (z1 + z2 + z3 + z4) / 2

so a value depends only on (key, t, c, its place in the chunk): not on how many threads computed the chunks, in
which order, nor on the step's length (the last chunk is computed whole and cut). ``runs replay`` therefore draws
the same noise with 1, 2 or 16 threads. ChaCha20 comes from ``cryptography`` (OpenSSL, a maintained cryptographic
library, several GB/s); the arithmetic is numpy's, which never splits an operation over threads. (torch's float64
log, sin and cos were faster on one thread, but torch splits them over its intra-op threads from a few thousand
elements: each call then waited for a second thread, 8 ms a call on a busy machine, and the split would change
which elements its scalar and vector kernels compute: values that depend on the thread count.)

The transform: Marsaglia's polar method (Marsaglia and Bray 1964), Box-Muller without sine or cosine. A word's top
53 bits, as a signed j, give u = (2 j + 1) 2^-53: uniform on (-1, 1), symmetric, never 0, exact. A pair (u, v) with
s = u^2 + v^2 < 1 is kept (pi/4 of them: a chunk draws 21/16 of the pairs it needs, those outside the disc are
replaced by spare ones inside it, and in the ~1e-32 case that is short the keystream goes on), and gives two
independent N(0, 1) values u f and v f with
f = sqrt(-2 ln s / s). Its largest value is about 12 (s of order 2^-105), beyond the 8.6 sigma that 53-bit Box-Muller
reaches (REFERENCES.md section 7). The arithmetic is IEEE multiplications, additions, one division and one square
root (correctly rounded on every machine) and numpy's log.

Why the sum of four stays, and what replaces Opacus' discarded draw. Opacus' secure mode (REFERENCES.md section 7;
Holohan and Braghin 2021, arXiv 2107.10138; the floating-point attack on Opacus, arXiv 2112.05307, after Mironov
2012) makes each value the sum of four normal draws over 2, so that no single floating-point draw sets a released
value and its irregular set of reachable values (what the attack reads) is smoothed over four independent inputs.
That construction is kept exactly: every value here is four independent float64 normals over two, and the four come
from four different polar pairs (the two values of one pair always land in two different values), so each value
rests on eight 53-bit uniforms. The /2 is folded into f, sqrt(-ln(s) / (2 s)) = f / 2 exactly (scaling by a power of
two is exact), so the result is bit for bit ((z1 + z2) + (z3 + z4)) / 2.
Opacus' one discarded draw guards a *sequential* generator: torch's Box-Muller caches the second value of a pair
and a generator's state carries from one call to the next, so the alignment of draws to released values is
predictable across calls. A counter-based keystream has neither: each (step, chunk) has its own key, derived
through HMAC-SHA256 (a PRF), its words are ChaCha20 output (a PRF of key and counter), nothing is cached across
chunks or steps, and no number of released values reveals the chunk key, other chunks or the run key. Discarding
a word would only shift which PRF outputs are used, which changes nothing an observer can learn; so nothing is
discarded, and the guard is instead that the key and every chunk key stay secret (never exported, no pickling).

Ahead of the step: the noise does not depend on the data (jax_privacy #85's plan, REFERENCES.md section 10), so
when step t's noise is taken, step t + 1's (the same length) is started on a background thread: a queue of one
step. ``close()`` stops it; ``threads`` sets how many threads share one step's chunks (determinism does not depend
on it). The key stays in the process: threads, never processes.

Where one core's time went in version 2, and what was measured instead (issue 29; ``benchmarks/overhead.py --noise-only`` prints
the profile). About 44 ns a value on the 2-core development machine, 2.7x source 1: keystream ~21 %, words to
uniforms ~20 %, the accept/reject replacement ~18 %, s ~11 %, log + division + sqrt ~16 %, the rest (products, the
sum, the chunk key and cipher set-up) ~14 %. Every stage is one numpy pass at 0.3 to 1.7 ns an element, about 40
element passes a value (four draws, 5.25 keystream words), so the sum is flat and no single change moves it much:
AES-256-CTR (OpenSSL, AES-NI) is 1.56 ns a word against ChaCha20's 1.83; numpy's ziggurat over randomgen's AESCounter
(AES-128) costs 12.4 ns a draw against 11 here; integer-valued uniforms (shift, or, cast) with the 2^-106 scale folded
into f give the same bits and no measurable gain; chunks of 4,096 to 32,768 values, np.place or take/put for the
replacement were slower or equal. Sources that change the values, timed in one run against this one: AES-256-CTR,
a two-pass conversion (j 2^-52, s = 0 refused), or both, within 3 % of it; interleaved pairs moved as complex128 15 %
slower. None is worth a third stored source. The 5x over source 1 that issue 29 asked for needs the ~40 passes fused
into one compiled loop, with a log of its own that is the same on every machine; numpy offers neither. Version 3
is that loop.

Version 1 (``GaussianNoise``, runs stored before issue 29, kept so they replay bit for bit): numpy's normals from
randomgen's ChaCha20, one discarded draw, then (z1 + z2 + z3 + z4) / 2 per value, synchronously.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import llvmlite.ir
import numba
import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numba.extending import intrinsic

NOISE_VERSION = 3  # the noise source of new runs; stored with the run (randomness.py) and used by its replay
NOISE_SOURCES = {
    1: "randomgen ChaCha20 stream, numpy normals: one discarded draw, then four float64 draws / 2",
    2: "ChaCha20 keystream (OpenSSL) per (step, chunk), polar method in float64 (numpy's log), four draws / 2",
    3: "as 2, with fdlibm's log in IEEE arithmetic (the same on every machine), one compiled loop (numba)",
}
CHUNK = 16_384  # values per keystream: part of versions 2 and 3 (a replay depends on it), never tuned
_PAIRS = 2 * CHUNK  # accepted polar pairs per chunk: four normals per value
_CANDIDATES = _PAIRS * 21 // 16  # candidate pairs drawn at once: pi/4 of them are accepted, 12 sd to spare
_NONCE = bytes(16)  # every chunk has its own key, so ChaCha20's counter and nonce start at zero
_ZEROS = memoryview(bytes(16 * _CANDIDATES))  # the plaintext whose encryption is the keystream


def chunk_key(noise_key: bytes, step: int, chunk: int, version: int = 2) -> bytes:
    """The 256-bit ChaCha20 key of ``chunk`` of ``step``: HMAC-SHA256(noise key, label || step || chunk)."""
    label = b"workbench/noise-v%d/" % version
    return hmac.new(noise_key, label + struct.pack("<QQ", step, chunk), hashlib.sha256).digest()


# -- version 3's log: fdlibm's e_log.c (Sun Microsystems 1993), as IEEE operations only ---------------------------
# s = 2^k m with m in (sqrt(2)/2, sqrt(2)], g = m - 1, r = g / (2 + g), log m = 2 atanh r by a degree-14 polynomial;
# error below 1 ulp. Only additions, multiplications and one division, each correctly rounded, in a fixed order (no
# libm, no SIMD library log), so the values are the same on every IEEE-754 machine. s is never 0, subnormal or >= 1.
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_LG1, _LG2, _LG3, _LG4 = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
)
_LG5, _LG6, _LG7 = 1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01
_MANTISSA, _ONE_BITS, _SQRT2 = 0x000FFFFFFFFFFFFF, 0x3FF0000000000000, 1.4142135623730951


def log_ieee(s: np.ndarray) -> np.ndarray:
    """Version 3's natural log of ``s`` (float64 in (0, 1), normal numbers), in numpy: the same operations, in the
    same order, as the compiled loop (the reference it is tested against)."""
    bits = np.ascontiguousarray(s, dtype=np.float64).view(np.int64)
    m = ((bits & _MANTISSA) | _ONE_BITS).view(np.float64)  # s = 2^(e - 1023) m, m in [1, 2)
    big = m > _SQRT2
    m = np.where(big, m * 0.5, m)
    k = ((bits >> 52) - np.where(big, 1022, 1023)).astype(np.float64)
    g = m - 1.0
    r = g / (2.0 + g)
    z = r * r
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    hfsq = 0.5 * g * g
    return k * _LN2_HI - ((hfsq - (r * (hfsq + (t2 + t1)) + k * _LN2_LO)) - g)


@intrinsic
def _as_int(typingctx, x):  # the bits of a float64 (a bitcast, no conversion)
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvmlite.ir.IntType(64))

    return numba.types.int64(numba.types.float64), codegen


@intrinsic
def _as_float(typingctx, i):  # the float64 of 64 bits
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvmlite.ir.DoubleType())

    return numba.types.float64(numba.types.int64), codegen


# No fastmath: every operation is IEEE and in the written order (no reassociation, no fused multiply-add), so the
# loop gives the numpy reference's bits (tests/engine/test_noise_source.py). error_model="numpy": no Python
# ZeroDivisionError check per division (s is never 0), which lets LLVM vectorise the loops. nogil: the background
# threads and the training thread run it at once.
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fused_chunk(words, out, s, f, idx):  # pragma: no cover - compiled (its Python text is what numba compiles)
    """Version 3's chunk from its keystream ``words`` (2 _CANDIDATES int64: u's words, then v's) into ``out``.
    ``s``, ``idx`` (_CANDIDATES) and ``f`` (2 CHUNK) are scratch; ``words`` is overwritten. False when the spare candidates
    inside the disc are too few (about 1e-32 a chunk): the caller then takes the numpy path, which reads on."""
    cand, pairs, n = _CANDIDATES, _PAIRS, CHUNK
    for p in range(cand):
        u = (words[p] >> 11) * 2.0**-52 + 2.0**-53
        v = (words[cand + p] >> 11) * 2.0**-52 + 2.0**-53
        s[p] = u * u + v * v
    # the k-th pair outside the disc takes the k-th spare inside it; the places are listed without a branch (a
    # branch on s, taken at random, cost more than the rest of the loop)
    k = 0
    for p in range(pairs):
        idx[k] = p
        k += s[p] >= 1.0
    m = pairs
    for q in range(pairs, cand):
        idx[m] = q
        m += s[q] < 1.0
    if m - pairs < k:
        return False
    for i in range(k):
        p, q = idx[i], idx[pairs + i]
        words[p], words[cand + p], s[p] = words[q], words[cand + q], s[q]
    for p in range(pairs):  # f / 2 = sqrt(-ln(s) / (2 s)), the log as log_ieee
        sp = s[p]
        bits = _as_int(sp)
        m = _as_float((bits & _MANTISSA) | _ONE_BITS)
        big = m > _SQRT2
        m = m * 0.5 if big else m
        k = float((bits >> 52) - (1022 if big else 1023))
        g = m - 1.0
        r = g / (2.0 + g)
        z = r * r
        w = z * z
        t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
        t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
        hfsq = 0.5 * g * g
        lg = k * _LN2_HI - ((hfsq - (r * (hfsq + (t2 + t1)) + k * _LN2_LO)) - g)
        h = lg * -0.5
        h = h / sp
        f[p] = math.sqrt(h)
    for i in range(n):  # the first draws of pairs i and n + i
        u0 = (words[i] >> 11) * 2.0**-52 + 2.0**-53
        u1 = (words[n + i] >> 11) * 2.0**-52 + 2.0**-53
        out[i] = u0 * f[i] + u1 * f[n + i]
    for i in range(n):  # plus the second draws of pairs i + 1 and n + i + 1 (mod n)
        j = i + 1 if i + 1 < n else 0
        v0 = (words[cand + j] >> 11) * 2.0**-52 + 2.0**-53
        v1 = (words[cand + n + j] >> 11) * 2.0**-52 + 2.0**-53
        out[i] += v0 * f[j] + v1 * f[n + j]
    return True


class _Workspace:
    """One thread's buffers for one chunk (reused: no allocation per chunk)."""

    def __init__(self) -> None:
        self.words = np.empty(2 * _CANDIDATES, dtype=np.int64)
        self.bytes = memoryview(self.words).cast("B")
        self.x = np.empty(2 * _CANDIDATES)
        self.s = np.empty(_CANDIDATES)
        self.t = np.empty(_CANDIDATES)
        self.f = np.empty(_PAIRS)
        self.idx = np.empty(_CANDIDATES, dtype=np.int64)


def _candidates(encryptor, ws: _Workspace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The next ``_CANDIDATES`` polar candidates of the keystream: (u, v, s = u^2 + v^2), views of ``ws``."""
    encryptor.update_into(_ZEROS, ws.bytes)
    np.right_shift(ws.words, 11, out=ws.words)  # the top 53 bits, signed: j in [-2^52, 2^52)
    np.multiply(ws.words, 2.0**-52, out=ws.x)
    ws.x += 2.0**-53  # (2 j + 1) 2^-53: uniform on (-1, 1), symmetric, never 0, exact
    u, v = ws.x[:_CANDIDATES], ws.x[_CANDIDATES:]
    np.multiply(u, u, out=ws.s)
    np.multiply(v, v, out=ws.t)
    ws.s += ws.t
    return u, v, ws.s


def _half_draws(
    noise_key: bytes, step: int, chunk: int, ws: _Workspace, version: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """The chunk's 4 CHUNK polar draws, halved: (u f, v f) / 2, two (2 CHUNK,) views of ``ws``.

    Pair p is candidate p when it falls in the unit disc; the k-th candidate below 2 CHUNK that falls outside is
    replaced by the k-th candidate beyond 2 CHUNK that falls inside (accepted candidates are i.i.d. uniform on the
    disc whatever their places, so the pairs are too; only the ~21 % replaced are moved, not every pair)."""
    encryptor = _encryptor(noise_key, step, chunk, version)
    u, v, s = _candidates(encryptor, ws)
    outside = np.flatnonzero(s[:_PAIRS] >= 1.0)
    inside = _PAIRS + np.flatnonzero(s[_PAIRS:] < 1.0)[: len(outside)]
    spare = [a[inside] for a in (u, v, s)]
    while len(spare[2]) < len(outside):  # about 1e-32 per chunk: the keystream goes on (fresh buffers: ws is in use)
        more = _candidates(encryptor, _Workspace())
        more_inside = np.flatnonzero(more[2] < 1.0)
        spare = [np.concatenate([a, b[more_inside]]) for a, b in zip(spare, more)]
    u, v, s = u[:_PAIRS], v[:_PAIRS], s[:_PAIRS]
    for a, b in zip((u, v, s), spare):
        a[outside] = b[: len(outside)]
    f = ws.t[:_PAIRS]
    if version == 2:
        np.log(s, out=f)
    else:
        f[:] = log_ieee(s)
    f *= -0.5
    f /= s
    np.sqrt(f, out=f)  # sqrt(-2 ln s / s) / 2, exactly half the textbook factor
    u *= f
    v *= f
    return u, v


def _encryptor(noise_key: bytes, step: int, chunk: int, version: int):
    key = chunk_key(noise_key, step, chunk, version)
    return Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()


def fill_chunk(
    noise_key: bytes, step: int, chunk: int, out: np.ndarray, ws: _Workspace | None = None, version: int = 2
) -> None:
    """Write chunk ``chunk`` of step ``step`` (CHUNK values of (z1 + z2 + z3 + z4) / 2) into ``out``.

    Value i takes the first draw of accepted pairs i and CHUNK + i and the second draw of pairs i + 1 and
    CHUNK + i + 1 (mod CHUNK): four different pairs, and the two draws of a pair go to two different values.
    Version 3 runs the compiled loop (the same bits as the numpy path, which it takes in the ~1e-32 case)."""
    ws = ws or _Workspace()
    if version == 3:
        _encryptor(noise_key, step, chunk, version).update_into(_ZEROS, ws.bytes)
        if _fused_chunk(ws.words, out, ws.s, ws.f, ws.idx):
            return
    numpy_chunk(noise_key, step, chunk, out, ws, version)


def numpy_chunk(noise_key: bytes, step: int, chunk: int, out: np.ndarray, ws: _Workspace, version: int = 2) -> None:
    """``fill_chunk`` in numpy passes: version 2, and version 3's reference (and its path in the ~1e-32 case)."""
    first, second = _half_draws(noise_key, step, chunk, ws, version)
    n = CHUNK
    np.add(first[:n], first[n:], out=out)
    tail = second[:n] + second[n:]
    out[:-1] += tail[1:]
    out[-1] += tail[0]


def single_draws(noise_key: bytes, step: int, chunk: int, version: int = 2) -> np.ndarray:
    """The chunk's 4 CHUNK individual N(0, 1) draws before they are summed (for the tail tests)."""
    first, second = _half_draws(noise_key, step, chunk, _Workspace(), version)
    return np.concatenate([first, second]) * 2.0


def default_threads() -> int:
    """Threads that share one step's chunks: half the cores, at most 4 (the noise is a few percent of a step)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class _StepJob:
    """One step's noise in the making. Any thread takes the next chunk not yet taken, so the thread that draws the
    step finishes what the background has not (it never waits on a thread starved of the GIL by the step itself)."""

    def __init__(self, step: int, count: int) -> None:
        self.step, self.count = step, count
        self.chunks = -(-count // CHUNK)
        self.out = np.empty(self.chunks * CHUNK)  # whole chunks: a value never depends on the step's length
        self._taken = self._done = 0
        self._cond = threading.Condition()
        self._cancelled = False
        self._error: BaseException | None = None
        self._started = time.perf_counter()
        self.seconds = 0.0  # from the job's start to its last chunk

    def work(self, key: bytes, ws: _Workspace, version: int) -> None:
        while True:
            with self._cond:
                if self._cancelled or self._error is not None or self._taken >= self.chunks:
                    return
                c, self._taken = self._taken, self._taken + 1
            try:
                fill_chunk(key, self.step, c, self.out[c * CHUNK : (c + 1) * CHUNK], ws, version)
            except BaseException as err:  # noqa: BLE001 - handed to the drawing thread by finish()
                with self._cond:
                    self._error = err
            with self._cond:
                self._done += 1
                self.seconds = time.perf_counter() - self._started
                self._cond.notify_all()

    def finish(self, key: bytes, ws: _Workspace, version: int) -> np.ndarray:
        """Help make the step, wait for the chunks other threads hold, and return its ``count`` values."""
        self.work(key, ws, version)
        self.idle()
        if self._error is not None:
            raise self._error
        return self.out[: self.count]

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
        self.idle()

    def idle(self) -> None:
        """Wait until no thread holds a chunk of this job."""
        with self._cond:
            self._cond.wait_for(lambda: self._done == self._taken)


class KeystreamNoise:
    """Versions 2 and 3 of the secret noise (module docstring): steps of float64 N(0, 1), the next one made ahead.

    ``draw_step(sizes)`` gives the next step's values for tensors of ``sizes`` elements, as one flat array (the
    tensors take consecutive slices), and starts the step after it on ``threads`` background threads (a queue of one
    step). ``sample`` and ``standard`` are one step each, with nothing made ahead. ``close()`` ends the threads. Not
    picklable, and its repr shows no key: the key never leaves the process."""

    def __init__(
        self, key: bytes, *, threads: int | None = None, prefetch: bool = True, version: int = NOISE_VERSION
    ) -> None:
        if version not in (2, 3):
            raise ValueError(f"KeystreamNoise makes noise sources 2 and 3, not {version}")
        self.version = version
        self._key = key
        self.threads = int(threads or default_threads())
        self.prefetch = prefetch
        self.step = 0  # steps drawn so far; step t uses index t (1, 2, ...)
        self._job: _StepJob | None = None  # the next step, in the making: the queue of one
        self._pool: ThreadPoolExecutor | None = None  # started at the first step made ahead
        self._local = threading.local()  # each thread's workspace
        self.wait_seconds = 0.0  # how long the last draw_step took to hand over its noise (what the step paid)
        self.make_seconds = 0.0  # from the start of making the last step's noise to its end (ahead: in the background)
        # dropped without close(): the threads end after their chunk (not joined: the last reference may go on one)
        self._finalizer = weakref.finalize(self, _shutdown, None, wait=False)

    # -- the noise ---------------------------------------------------------------------------------
    def draw_step(self, sizes: Sequence[int], *, ahead: bool = True) -> np.ndarray:
        """The next step's ``sum(sizes)`` standard normals (float64, flat); starts the step after it (``ahead``)."""
        count = int(sum(sizes))
        t0 = time.perf_counter()
        self.step += 1
        job, self._job = self._job, None
        if job is None or job.step != self.step or job.count < count:  # nothing ahead, or a shorter step
            if job is not None:
                job.cancel()
            job = self._start(_StepJob(self.step, count), helpers=self.threads - 1)
        values = job.finish(self._key, self._workspace(), self.version)[
            :count
        ]  # a longer step made ahead: its first values
        self.wait_seconds, self.make_seconds = time.perf_counter() - t0, job.seconds
        if self.prefetch and ahead and count:
            self._job = self._start(_StepJob(self.step + 1, count), helpers=self.threads)
        return values

    def standard(self, count: int) -> np.ndarray:
        """``count`` float64 N(0, 1) values: one step of their own (nothing made ahead)."""
        return self.draw_step([count], ahead=False)

    def sample(
        self, shape: torch.Size | tuple[int, ...], std: float, *, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """A float64 tensor of ``shape`` with i.i.d. N(0, std^2) entries, on ``device`` (one step)."""
        values = torch.from_numpy(self.standard(math.prod(shape))).reshape(tuple(shape))
        return values.mul_(float(std)).to(device)

    # -- the threads ---------------------------------------------------------------------------------
    def _start(self, job: _StepJob, *, helpers: int) -> _StepJob:
        for _ in range(min(helpers, job.chunks)):
            self._executor().submit(self._work, job)
        return job

    def _work(self, job: _StepJob) -> None:
        job.work(self._key, self._workspace(), self.version)

    def _workspace(self) -> _Workspace:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = _Workspace()
        return ws

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="workbench-noise")
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _shutdown, self._pool, wait=False)
        return self._pool

    def close(self) -> None:
        """Drop the step made ahead and end the threads (each finishes the chunk it holds: a moment)."""
        job, self._job = self._job, None
        if job is not None:
            job.cancel()
        pool, self._pool = self._pool, None
        self._finalizer.detach()
        _shutdown(pool, wait=True)

    def __enter__(self) -> "KeystreamNoise":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- where the stream stands (a checkpoint), and what must never happen to the key ------------------
    def state(self) -> dict:
        """Where the stream stands, JSON-able and without the key: the steps drawn."""
        return {"noise_source": self.version, "steps": self.step}

    def restore(self, state: dict) -> None:
        """Continue after ``state["steps"]`` steps (a checkpoint of a run of the same key and version)."""
        if state.get("noise_source") != self.version:
            raise ValueError(
                f"a noise state of source {state.get('noise_source')!r} cannot continue source {self.version}"
            )
        self.close()
        self.step = int(state["steps"])

    def __repr__(self) -> str:
        return f"KeystreamNoise(v{self.version}, step={self.step}, threads={self.threads})"

    def __reduce__(self):
        raise TypeError("the noise source holds the run's secret key: it is never pickled or sent to another process")


def _shutdown(pool: ThreadPoolExecutor | None, *, wait: bool) -> None:
    if pool is not None:
        pool.shutdown(wait=wait, cancel_futures=True)


class GaussianNoise:
    """Version 1 (runs stored before issue 29): N(0, std^2) in float64 from a numpy Generator (randomgen's
    ChaCha20): one discarded draw, then (z1 + z2 + z3 + z4) / 2 per value, for every tensor separately."""

    version = 1

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def standard(self, count: int) -> np.ndarray:
        """``count`` float64 draws from N(0, 1), built as described above."""
        self.rng.standard_normal()  # discarded, as Opacus' secure mode does
        out = self.rng.standard_normal(count)
        for _ in range(3):
            out += self.rng.standard_normal(count)
        out *= 0.5
        return out

    def draw_step(self, sizes: Sequence[int], *, ahead: bool = True) -> np.ndarray:
        """One ``standard`` per tensor, in order (as version 1 always drew), as one flat array (never ahead)."""
        parts = [self.standard(int(n)) for n in sizes]
        return np.concatenate(parts) if parts else np.zeros(0)

    def sample(
        self, shape: torch.Size | tuple[int, ...], std: float, *, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """A float64 tensor of ``shape`` with i.i.d. N(0, std^2) entries, on ``device``."""
        count = math.prod(shape)
        values = torch.from_numpy(self.standard(count) * float(std)).reshape(tuple(shape))
        return values.to(device)

    def close(self) -> None:
        """Nothing runs ahead in version 1."""

    def state(self) -> dict:
        return {"noise_source": self.version, "bit_generator": self.rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
