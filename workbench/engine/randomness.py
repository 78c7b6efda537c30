"""The randomness differential privacy rests on: which units each Poisson batch holds, and the noise.

DP-SGD's guarantee assumes the adversary knows neither (REFERENCES.md section 7). A seed anyone
can read (a default, a config that is exported) makes both reproducible: retraining the exported
settings on each candidate dataset finds the true one bit for bit, and subtracting a replay from
the released adapter cancels the noise. So every run draws a fresh 256-bit key from the operating
system (``secrets``), and the sampling and noise generators are derived from it:

    key (32 bytes, os entropy) --HMAC-SHA256("poisson-sampling")--> ChaCha20 -> Poisson sampling
                               --HMAC-SHA256("gaussian-noise")----> ChaCha20 -> Gaussian noise

ChaCha20 (``randomgen.ChaCha``, 20 rounds, keyed directly with the 256-bit derived key) is a
cryptographic stream cipher, so no number of released outputs reveals the key; numpy's
``Generator`` turns its words into uniforms and normals. The key is never exported, printed or
put in an event: it is kept only beside the run in the local store (file mode 0600) so the data
owner can replay the run exactly (``workbench runs replay``).

``noise_seed`` (a config option for teaching and debugging) derives the key from a public seed
instead: the same code path, reproducible, and no differential-privacy guarantee; such runs are
labelled "seeded randomness" everywhere.

The Gaussian noise (``noise.py``) is float64 and robust to the floating-point weaknesses of sampled normals the
way Opacus' ``secure_mode`` is: each value is the sum of four float64 draws over 2 (Holohan and Braghin 2021,
arXiv 2107.10138; REFERENCES.md section 7). Since issue 29 (noise source 2) it comes from a ChaCha20 keystream per
(step, chunk) derived from the noise key, made a step ahead on a background thread (source 3 since its fused
numba loop; source 2 runs replay with source 2); runs stored before keep source
1 (randomgen's ChaCha20 stream, one discarded draw) and replay with it. The source is recorded with the run: a
second line of the key file, and ``noise_source`` in the summary (for seeded runs, which keep no key file).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from randomgen import ChaCha

from workbench.engine.noise import NOISE_SOURCES, NOISE_VERSION, GaussianNoise, KeystreamNoise
from workbench.errors import UserError

__all__ = ["GaussianNoise", "KeystreamNoise", "NOISE_VERSION", "ReplayError", "RunRandomness", "stream"]

KEY_BYTES = 32  # 256 bits from the OS; the issue asks for at least 128
KEY_FILE = "randomness.key"
SEEDED_LABEL = "seeded randomness: no differential-privacy guarantee"


class ReplayError(UserError, ValueError):
    """A run cannot be replayed (its key is missing, unreadable or damaged); the message says what to do."""


@dataclass(frozen=True, repr=False)
class RunRandomness:
    """The run's key and where it came from. ``repr`` never shows the key."""

    key: bytes
    noise_seed: int | None = None  # set only in the labelled, non-private seeded mode
    noise_version: int = NOISE_VERSION  # which noise source (noise.py) the run draws from; older runs keep theirs

    @classmethod
    def secret(cls) -> "RunRandomness":
        """A fresh key from the operating system's entropy (``secrets.token_bytes``)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def seeded(cls, noise_seed: int, *, noise_version: int = NOISE_VERSION) -> "RunRandomness":
        """A key anyone can recompute from ``noise_seed``: reproducible, not private. ``noise_version``: the
        source a stored run used (its summary's ``noise_source``; 1 when it has none), for its replay."""
        _check_version(noise_version, what=f"the seeded run (noise_seed={noise_seed})")
        digest = hashlib.sha256(f"workbench-noise-seed:{int(noise_seed)}".encode()).digest()
        return cls(digest, noise_seed=int(noise_seed), noise_version=int(noise_version))

    @classmethod
    def for_config(cls, config) -> "RunRandomness":
        """Secret unless the config asks for the labelled seeded mode."""
        return cls.secret() if config.noise_seed is None else cls.seeded(config.noise_seed)

    @property
    def is_seeded(self) -> bool:
        return self.noise_seed is not None

    def _generator(self, purpose: bytes) -> np.random.Generator:
        return stream(self._derive(purpose))

    def _derive(self, purpose: bytes) -> bytes:
        return hmac.new(self.key, b"workbench/" + purpose, hashlib.sha256).digest()

    def rank_sampling_key(self, rank: int, world_size: int) -> bytes:
        """The key of rank ``rank``'s Poisson-sampling stream in a data-parallel run of ``world_size`` ranks
        (engine/distributed.py): rank 0 sends it to that rank only; the run key itself never leaves rank 0."""
        return self._derive(f"poisson-sampling/rank-{int(rank)}-of-{int(world_size)}".encode())

    def sampling_rng(self) -> np.random.Generator:
        """The generator of the Poisson sampling (one per run)."""
        return self._generator(b"poisson-sampling")

    def noise(self, *, threads: int | None = None) -> "KeystreamNoise | GaussianNoise":
        """The source of the Gaussian noise (one per run), the version the run uses (noise.py). ``threads``: how
        many threads make a step's noise (sources 2 and 3; the values do not depend on it)."""
        if self.noise_version == 1:
            return GaussianNoise(self._generator(b"gaussian-noise"))
        label = b"gaussian-noise-v%d" % self.noise_version  # source 3 has a key of its own
        return KeystreamNoise(self._derive(label), threads=threads, version=self.noise_version)

    def canary_rng(self) -> np.random.Generator:
        """The generator of secret audit coins (canary inclusion), independent of the other two."""
        return self._generator(b"canaries")

    def exposure_rng(self) -> np.random.Generator:
        """The generator of the exposure test's random candidates (audit/exposure.py), independent of the others."""
        return self._generator(b"exposure-candidates")

    def __repr__(self) -> str:
        return f"RunRandomness(seeded={self.noise_seed!r})" if self.is_seeded else "RunRandomness(secret)"

    # -- the key file beside the run (never exported) -----------------------------------------
    def save(self, run_dir: Path) -> Path | None:
        """Write the secret key to ``run_dir/randomness.key`` (mode 0600); seeded runs need none."""
        if self.is_seeded:
            return None
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / KEY_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:  # the key, then the noise source (a file of one line is source 1)
            fh.write(f"{self.key.hex()}\nnoise-source {self.noise_version}\n")
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)  # O_CREAT's mode is masked by umask; be explicit
        return path

    @classmethod
    def load(cls, run_dir: Path, *, run_id: str) -> "RunRandomness":
        """The key a run stored; ReplayError with what to do when it is missing or unreadable."""
        path = run_dir / KEY_FILE
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            raise ReplayError(
                f"run {run_id} has no key file ({path}): its sampling and noise cannot be replayed. "
                "Only runs trained by this workbench version keep one, and only on the machine that trained them."
            ) from None
        except OSError as err:
            raise ReplayError(
                f"run {run_id}'s key file {path} cannot be read ({err.strerror}). Check its permissions."
            ) from None
        lines = text.splitlines() or [""]
        try:
            key = bytes.fromhex(lines[0])
        except ValueError:
            key = b""
        version = 1  # key files of one line were written before noise sources had numbers
        if len(lines) == 2 and lines[1].startswith("noise-source ") and lines[1].split()[1].isdigit():
            version = int(lines[1].split()[1])
        elif len(lines) != 1:
            key = b""
        if len(key) != KEY_BYTES:
            raise ReplayError(
                f"run {run_id}'s key file {path} is damaged (expected {2 * KEY_BYTES} hex digits). It cannot be replayed."
            )
        _check_version(version, what=f"run {run_id}")
        return cls(key, noise_version=version)


def _check_version(version: int, *, what: str) -> None:
    if version not in NOISE_SOURCES:
        raise ReplayError(
            f"{what} drew its noise from source {version}, which this workbench version does not know (it knows "
            f"{', '.join(map(str, NOISE_SOURCES))}): replay it with the workbench version that trained it."
        )


def stream(derived_key: bytes) -> np.random.Generator:
    """A numpy Generator over ChaCha20 (20 rounds) keyed with a 256-bit derived key."""
    return np.random.Generator(ChaCha(key=int.from_bytes(derived_key, "little"), counter=0, rounds=20))
