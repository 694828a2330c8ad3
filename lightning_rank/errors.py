"""Every error a user can cause: the CLI prints the message alone and exits 2 for an :class:`InputError`;
anything else is a bug and ends in a traceback and exit 1."""

from __future__ import annotations

import math


class InputError(Exception):
    """Bad user input (a config, an option, a data file): the CLI prints the message alone and exits 2."""


class ConfigError(InputError, ValueError):
    """A config file or option that cannot be used as given."""


class DatasetDownloadError(InputError, RuntimeError):
    """An ir_datasets id whose files are not on this machine and could not be downloaded."""


class DataFileNotFoundError(InputError, FileNotFoundError):
    """A local data file (collection, run) that does not exist."""


class DatasetNotFoundError(InputError, KeyError):
    """An ir_datasets id that is neither built into ir_datasets nor registered by lightning-rank."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownBackboneError(InputError, ValueError):
    """A config names a backbone that no installed entry point or import path provides."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; raised before any checkpoint holds the damage."""


class CudaGraphError(RuntimeError):
    """A forward could not be captured (it synchronises with the host) or graphs cannot run here."""


class HubModelNotCachedError(InputError, OSError):
    """A hub id that is not in the local cache while the hub cannot be reached (backbones/hub.py)."""


class ModelNotFoundError(InputError, FileNotFoundError):
    """A model an option names that is not there: a checkpoint file, an export folder, or a model or tokenizer
    that is neither a local folder nor a repository on the hub (backbones/hub.py)."""


class DataError(InputError, ValueError):
    """Data that cannot be used as given (an empty corpus, nothing to train on or to rerank)."""


class DataFileError(DataError):
    """A local data file that cannot be read as given; the message names the file and, if it can, the line."""


class CheckpointError(InputError):
    """A checkpoint that cannot be read safely, or at all: the CLI prints it and exits 2."""


class OutputError(InputError, FileExistsError):
    """An output path that holds something a write must not replace: the CLI prints it and exits 2."""


class UntrustedCodeError(InputError, ValueError):
    """An export that asks to run its own Python code, loaded without the caller's ``trust_remote_code``."""


class UploadError(InputError, OSError):
    """An upload to the Hugging Face hub that failed (network, login, permissions): the local files stay."""


# -- range checks of numeric options, run before any data is read ---------------------------------------
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


def check_group_size(group_size: int, positives_per_group: int = 1) -> None:
    """A training group is at least one positive and at least one negative, so ``group_size`` must be >= 2
    and ``1 <= positives_per_group < group_size``."""
    if group_size < 2:
        raise ConfigError(
            f"data.group_size must be >= 2, got {group_size}: a training group is one positive and at least "
            "one negative. Set data.group_size to 2 or more (8 by default: 1 positive + 7 negatives)."
        )
    check_at_least("data.positives_per_group", positives_per_group, 1, "a group holds at least 1 positive")
    if positives_per_group >= group_size:
        raise ConfigError(
            f"data.positives_per_group {positives_per_group} leaves no room for a negative in groups of "
            f"data.group_size {group_size}. Set data.positives_per_group below data.group_size, or raise "
            f"data.group_size to at least {positives_per_group + 1}."
        )
