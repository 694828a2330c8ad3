"""Range checks of numeric options, run when a command or a class is configured, before any data is read.

A size of 0 or a negative learning rate would otherwise end in a traceback from torch or our own indexing,
or train nothing; each check raises :class:`~lightning_rank.preflight.ConfigError` naming the option, the
value given and the range it must lie in.
"""

from __future__ import annotations

import math

from lightning_rank.preflight import ConfigError


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def check_at_least(option: str, value: float | None, minimum: float, why: str = "") -> None:
    """Refuse ``value < minimum`` (None passes: the option is unset); ``why``: what the minimum means."""
    if value is None:
        return
    if not _is_number(value) or value < minimum:
        reason = f" ({why})" if why else ""
        raise ConfigError(
            f"{option} must be >= {minimum}, got {value!r}{reason}; set it to {minimum} or more"
        )


def check_between(option: str, value: float | None, low: float, high: float) -> None:
    """Refuse ``value`` outside ``[low, high]`` (None passes)."""
    if value is None:
        return
    if not _is_number(value) or not low <= value <= high:
        raise ConfigError(f"{option} must be in [{low}, {high}], got {value!r}")


def check_sizes(prefix: str, minimum: int = 1, **values: int | None) -> None:
    """:func:`check_at_least` for several options that share a prefix and a minimum."""
    for name, value in values.items():
        check_at_least(f"{prefix}{name}", value, minimum)
