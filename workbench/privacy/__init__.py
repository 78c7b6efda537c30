"""Privacy accounting for DP-SGD: epsilon, calibration, live tracking, user-level bounds.

Accountants: ``pld`` (default, Google dp_accounting), ``rdp`` (dp_accounting), ``prv`` (Opacus)
and ``edgeworth`` (our approximation; not an upper bound, see ``is_approximation``).
"""

from workbench.privacy.accountants import (
    ACCOUNTANTS,
    NEIGHBORING,
    EpsilonTracker,
    PrivacyError,
    bound_accountant,
    check_neighboring,
    epsilon,
    is_approximation,
)
from workbench.privacy.calibrate import calibrate, epsilon_curve
from workbench.privacy.user_level import group_privacy_bound, user_epsilon_els

__all__ = [
    "ACCOUNTANTS",
    "bound_accountant",
    "NEIGHBORING",
    "check_neighboring",
    "EpsilonTracker",
    "PrivacyError",
    "calibrate",
    "epsilon",
    "epsilon_curve",
    "group_privacy_bound",
    "is_approximation",
    "user_epsilon_els",
]
