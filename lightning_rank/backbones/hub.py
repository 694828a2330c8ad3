"""How every backbone turns a ``pretrained`` / ``tokenizer`` string into files: one offline and hub policy.

A local folder is used as it is. A Hugging Face hub id is handed to the loader (which downloads it) while the
hub can be reached; offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) or without network it becomes its
cached snapshot folder, or fails at once with :class:`~lightning_rank.errors.HubModelNotCachedError` naming
the id, the cache and the command that fetches it, instead of retrying for half a minute. Anything else is a
:class:`~lightning_rank.errors.ModelNotFoundError`. Code a checkpoint ships runs only when the backbone's
``trust_remote_code`` says so; that flag defaults to False wherever it is taken.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from lightning_rank.errors import HubModelNotCachedError, ModelNotFoundError
from lightning_rank.text.builtin_tokenizer import BUILTIN_PREFIX

_TRUE = {"1", "ON", "YES", "TRUE"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PROBE_TIMEOUT_S = 3.0


def is_offline() -> bool:
    """Offline mode, read at call time (the hub library reads its flag once, at import)."""
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub endpoint answers a TCP connect within a few seconds (assumed yes behind a proxy)."""
    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _online() -> bool:
    return not is_offline() and hub_reachable()


def _existing_folder(source: str, what: str) -> Path | None:
    """``source`` as a local folder, None for a hub id; anything else is a :class:`ModelNotFoundError`."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.match(source) or source.startswith((".", "~")):
        raise ModelNotFoundError(f"{what} {source!r} is neither a local folder nor a Hugging Face hub id")
    return None


def resolve(name_or_path: str, what: str) -> str:
    """A local folder or builtin tokenizer as given; a hub id as given while the hub can be reached (the
    loader downloads it), else its cached snapshot folder. ``what`` names the option in errors."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    folder = _existing_folder(name_or_path, what)
    if folder is not None:
        return str(folder)
    if _online():
        return name_or_path
    return str(snapshot(name_or_path, what))


def local_folder(name_or_path: str, what: str, allow_patterns: list[str] | None = None) -> Path:
    """A local folder, or the snapshot folder of a hub id (its ``allow_patterns`` files downloaded when the
    hub can be reached): for backbones that read the files themselves."""
    folder = _existing_folder(name_or_path, what)
    return folder if folder is not None else snapshot(name_or_path, what, allow_patterns)


def snapshot(repo_id: str, what: str, allow_patterns: list[str] | None = None) -> Path:
    """The local snapshot folder of a hub id: downloaded when the hub can be reached, else from the cache."""
    from huggingface_hub import snapshot_download

    online = _online()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=not online))
    except Exception as err:  # LocalEntryNotFoundError, a failed download, or a malformed cache entry
        raise hub_error(err, repo_id, what) or not_cached(repo_id, what, err if online else None) from err


@contextlib.contextmanager
def hub_errors(name_or_path: str, what: str) -> Iterator[None]:
    """Turn huggingface_hub's and transformers' offline / not-cached / no-such-repository errors raised
    inside the block into the project's errors naming ``name_or_path``; any other error passes unchanged."""
    try:
        yield
    except Exception as err:
        mapped = hub_error(err, name_or_path, what)
        if mapped is None or mapped is err:
            raise
        raise mapped from err


def hub_error(err: BaseException, name_or_path: str, what: str) -> Exception | None:
    """The project's error for a hub failure anywhere in ``err``'s chain (transformers wraps them in a plain
    OSError), or None when the chain holds none."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, HubModelNotCachedError | ModelNotFoundError):
            return cause if cause is err else type(cause)(*cause.args)
        if isinstance(cause, LocalEntryNotFoundError | OfflineModeIsEnabled):
            return not_cached(name_or_path, what)
        if isinstance(cause, RepositoryNotFoundError):  # also a gated or private repository
            return ModelNotFoundError(
                f"{what} {name_or_path!r} is neither a local folder nor a repository on the Hugging Face hub "
                "(a private or gated one needs `hf auth login`)"
            )
        cause = cause.__cause__ or cause.__context__
    return None


def not_cached(
    repo_id: str, what: str, download_error: BaseException | None = None
) -> HubModelNotCachedError:
    """The one-line error for a hub id that is not on this machine: the id, the cache folder under HF_HOME
    and the command that fetches it."""
    from huggingface_hub import constants

    if download_error is not None:
        reason = f"downloading it failed ({type(download_error).__name__})"
    elif is_offline():
        reason = "offline mode is on (HF_HUB_OFFLINE)"
    else:
        reason = "the hub cannot be reached"
    return HubModelNotCachedError(
        f"{what} {repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}, "
        f"HF_HOME={constants.HF_HOME}) and {reason}: it must be downloaded first, e.g. "
        f"`hf download {repo_id}` with network access and the same HF_HOME, or pass a local folder instead"
    )
