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

The Gaussian noise is drawn in float64 and made robust to the floating-point weaknesses of
sampled normals the way Opacus' ``secure_mode`` does (opacus/optimizers/optimizer.py
``_generate_noise``): one draw discarded, then each value is the sum of four draws divided by 2
(still N(0, std^2)); Holohan and Braghin 2021, arXiv 2107.10138, and the floating-point attack on
Opacus, arXiv 2112.05307 (after Mironov 2012). fp32 ``torch.normal`` on the CPU builds each draw
from 24-bit uniforms and never exceeds about 5.77 sigma, a hole in the tail an observer can test
for; float64 draws (53-bit uniforms) reach about 8.6 sigma, and a sum of four reaches far beyond.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from randomgen import ChaCha

KEY_BYTES = 32  # 256 bits from the OS; the issue asks for at least 128
KEY_FILE = "randomness.key"
SEEDED_LABEL = "seeded randomness: no differential-privacy guarantee"


class ReplayError(ValueError):
    """A run cannot be replayed (its key is missing, unreadable or damaged); the message says what to do."""


@dataclass(frozen=True, repr=False)
class RunRandomness:
    """The run's key and where it came from. ``repr`` never shows the key."""

    key: bytes
    noise_seed: int | None = None  # set only in the labelled, non-private seeded mode

    @classmethod
    def secret(cls) -> "RunRandomness":
        """A fresh key from the operating system's entropy (``secrets.token_bytes``)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def seeded(cls, noise_seed: int) -> "RunRandomness":
        """A key anyone can recompute from ``noise_seed``: reproducible, not private."""
        digest = hashlib.sha256(f"workbench-noise-seed:{int(noise_seed)}".encode()).digest()
        return cls(digest, noise_seed=int(noise_seed))

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

    def noise(self) -> "GaussianNoise":
        """The source of the Gaussian noise (one per run)."""
        return GaussianNoise(self._generator(b"gaussian-noise"))

    def canary_rng(self) -> np.random.Generator:
        """The generator of secret audit coins (canary inclusion), independent of the other two."""
        return self._generator(b"canaries")

    def exposure_rng(self) -> np.random.Generator:
        """The generator of the exposure test's random candidates (engine/exposure.py), independent of the others."""
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
        with os.fdopen(fd, "w") as fh:
            fh.write(self.key.hex() + "\n")
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
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise ReplayError(
                f"run {run_id}'s key file {path} is damaged (expected {2 * KEY_BYTES} hex digits). It cannot be replayed."
            )
        return cls(key)


def stream(derived_key: bytes) -> np.random.Generator:
    """A numpy Generator over ChaCha20 (20 rounds) keyed with a 256-bit derived key."""
    return np.random.Generator(ChaCha(key=int.from_bytes(derived_key, "little"), counter=0, rounds=20))


class GaussianNoise:
    """N(0, std^2) noise in float64: one discarded draw, then (z1 + z2 + z3 + z4) / 2 per value.

    The sum of four independent standard normals has variance 4, so dividing by 2 keeps the
    distribution exactly N(0, 1); what changes is that no single floating-point draw sets a value
    (Opacus secure_mode; Holohan and Braghin 2021). Drawn on the CPU from the ChaCha20 stream and
    moved to the parameter's device: LoRA gradients are small, so this costs well under 1 % of a step
    (benchmarks/overhead.py measures it).
    """

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

    def sample(
        self, shape: torch.Size | tuple[int, ...], std: float, *, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """A float64 tensor of ``shape`` with i.i.d. N(0, std^2) entries, on ``device``."""
        count = math.prod(shape)
        values = torch.from_numpy(self.standard(count) * float(std)).reshape(tuple(shape))
        return values.to(device)
