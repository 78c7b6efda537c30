"""Input validation for the privacy functions: every message names the bad value and says what is
expected. Its own module so the accountants and the Edgeworth expansion both import it (no cycle)."""

from __future__ import annotations

import math
import numbers

from workbench.config import ACCOUNTANT_CHOICES as ACCOUNTANTS  # one list: the run config's choices
from workbench.errors import UserError

NEIGHBORING = ("add_remove", "replace_one")


class PrivacyError(UserError, ValueError):
    """Bad input to privacy accounting, or a value the chosen accountant cannot give."""


def check_accountant(accountant: str) -> str:
    """Return ``accountant`` if it is one of ACCOUNTANTS, else raise PrivacyError."""
    if not isinstance(accountant, str) or accountant not in ACCOUNTANTS:
        raise PrivacyError(f"accountant must be one of {', '.join(ACCOUNTANTS)}. Found {accountant!r}.")
    return accountant


def check_neighboring(neighboring: str, *, accountant: str = "pld") -> str:
    """Return ``neighboring`` if it is known and ``accountant`` can analyse it, else PrivacyError."""
    if not isinstance(neighboring, str) or neighboring not in NEIGHBORING:
        raise PrivacyError(f"neighboring must be one of {', '.join(NEIGHBORING)}. Found {neighboring!r}.")
    if neighboring == "replace_one" and accountant != "pld":
        raise PrivacyError(
            f"the {accountant} accountant has no replace-one analysis of Poisson sampling (dp_accounting's PLD has); "
            "use accountant=pld, or neighboring=add_remove with a dataset size you declare public (public_dataset_size)."
        )
    return neighboring


def check_real(name: str, value: object) -> float:
    """Return ``value`` as a finite float, else raise PrivacyError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyError(f"{name} must be a real number. Found {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise PrivacyError(f"{name} must be finite. Found {value}.")
    return value


def check_noise_multiplier(noise_multiplier: object) -> float:
    sigma = check_real("noise_multiplier", noise_multiplier)
    if sigma < 0:
        raise PrivacyError(f"noise_multiplier must be >= 0. Found {sigma}.")
    return sigma


def check_sample_rate(sample_rate: object) -> float:
    q = check_real("sample_rate", sample_rate)
    if not 0 < q <= 1:
        raise PrivacyError(f"sample_rate must be in (0, 1] (expected batch size / dataset size). Found {q}.")
    return q


def check_delta(delta: object) -> float:
    d = check_real("delta", delta)
    if not 0 < d < 1:
        raise PrivacyError(f"delta must be in (0, 1); usually well below 1/dataset size. Found {d}.")
    return d


def check_count(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an int >= minimum (ints and integral numpy ints only)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PrivacyError(f"{name} must be an integer >= {minimum}. Found {value!r}.")
    if value < minimum:
        raise PrivacyError(f"{name} must be an integer >= {minimum}. Found {value}.")
    return int(value)
