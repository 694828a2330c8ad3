"""One fit per checkpoint folder: an exclusive ``flock`` held for the life of the process that fits there.

Two fits writing one folder would overwrite each other's ``last.ckpt`` and both report success. The lock is
a file beside the folder (``<folder>.lock``), not in it, so that Lightning's "checkpoint directory is not
empty" check and a listing of the folder stay as they were. ``flock`` is released by the kernel when its
process ends, however it ends, so the lock file a dead process left behind never blocks a new fit; it also
works on NFS (as a POSIX lock). A process that already holds a folder's lock (a second fit in one Python
session) takes it again at no cost.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from lightning_rank.errors import ConfigError

_HELD: dict[Path, int] = {}  # folder -> descriptor of its lock file, open for the process's life


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder).resolve()
    return folder.with_name(f"{folder.name}.lock")


def lock_checkpoint_folder(folder: str | os.PathLike) -> Path:
    """Take ``folder``'s lock for this process, or raise :class:`ConfigError` naming the folder, the
    process holding it and the fix. Returns the lock file."""
    folder = Path(folder).resolve()
    path = lock_path(folder)
    if folder in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise ConfigError(
            f"checkpoint folder {folder} is in use by {who} (lock {path}): two fits there would overwrite "
            "each other's last.ckpt. Give this fit its own folder with --trainer.default_root_dir DIR, or "
            "wait for the other fit to end"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[folder] = fd
    return path


def release_checkpoint_folder(folder: str | os.PathLike) -> None:
    """Give up ``folder``'s lock before the process ends (the lock file stays; it blocks nothing)."""
    fd = _HELD.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)
