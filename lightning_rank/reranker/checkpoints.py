"""How the trainer subcommands read a checkpoint: never its code, and never over the user's settings silently.

Every checkpoint is read with ``torch.load(weights_only=True)``, from a file or a URL: tensors and plain
values only, since unpickling an object can run any code the file names. A file that is not a checkpoint
(missing, empty, truncated, something else) ends in one line naming it.

A checkpoint's hyper-parameters fill in the model settings the user did not give. A setting the user gave
(command line or config file) that differs from the checkpoint's is used where the weights still read the
same with it (lr, measures, a kernel choice, ...) and named in a warning; where the weights would not fit it
or would mean something else (the backbone, its architecture, tokenizer or template, LoRA) it is refused.
"""

from __future__ import annotations

import os
import pickle
import re
import urllib.error
import urllib.parse
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_rank.errors import CheckpointError, ConfigError

# backbone_args that change how the weights run, not what they are: the user's value is sound
RUNTIME_BACKBONE_ARGS = frozenset(
    {"use_kernels", "gradient_checkpointing", "attn_implementation", "dtype", "trust_remote_code"}
)
# model settings that define the weights: a checkpoint's cannot be read with others
ARCHITECTURE = frozenset({"backbone", "lora", "init_head"})
# a resumed fit restores the optimizer state of exactly these trainable parameters
SAME_FOR_A_RESUME = frozenset({"frozen"})
# code runs only when the user asks: a checkpoint's own value is never taken
USER_ONLY_BACKBONE_ARGS = frozenset({"trust_remote_code"})


#: the checkpoints a fit keeps under ``<default_root_dir>/checkpoints``, by the name ``--ckpt_path`` takes
NAMED_CHECKPOINTS = ("best", "last")


def named_checkpoint(root: str | os.PathLike, name: str) -> Path:
    """Where a fit with ``--trainer.default_root_dir root`` keeps ``best.ckpt`` or ``last.ckpt``."""
    return Path(root) / "checkpoints" / f"{name}.ckpt"


def missing_best(folder: str | os.PathLike, action: str) -> CheckpointError:
    """``--ckpt_path best`` with no ``best.ckpt`` in ``folder``: why a fit leaves none, and what to do."""
    return CheckpointError(
        f"--ckpt_path best: no best.ckpt in {folder}, so there is no best model to {action}. A fit keeps "
        "best.ckpt only when it validates (data.val_dataset or data.val_datasets set, and at least one "
        "validation run before it ends): fit again with a validation set and the same "
        "--trainer.default_root_dir, or pass --ckpt_path last or a .ckpt file"
    )


def is_url(path: str) -> bool:
    return str(path).startswith(("http://", "https://"))


def read_checkpoint(path: str, weights_only: bool = True) -> dict[str, Any]:
    """The checkpoint at a local ``path`` or an http(s) URL (downloaded into torch's hub cache, where
    Lightning's own load then finds it), read without running code unless ``weights_only`` is False."""

    if not is_url(path):
        return _load(Path(path), path, weights_only)
    cached = download_checkpoint(path)
    try:
        return _load(cached, path, weights_only)
    except CheckpointError:
        cached.unlink(missing_ok=True)  # a later run downloads it again rather than meet this copy
        raise


def _load(local: Path, path: str, weights_only: bool) -> dict[str, Any]:
    """``torch.load`` of ``local`` (the file behind ``path``); its failures as :class:`CheckpointError`."""
    import torch

    check_checkpoint_file(local, path)
    try:
        return torch.load(local, map_location="cpu", mmap=True, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_pickled_code_message(path, err)) from None
    except RuntimeError as err:  # torch's zip reader: a damaged archive
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"--ckpt_path {path}: the checkpoint is damaged ({first}); "
            "pass an intact copy or another checkpoint"
        ) from None


def check_checkpoint_file(local: Path, shown: str) -> None:
    """A missing file, a folder, an empty file or one that is not a (complete) ``torch.save`` zip archive
    fails here with what it is and what to pass instead."""
    fix = "pass a .ckpt file written by `lightning-rank fit` (or `last` to resume from its folder)"
    if not local.exists():
        raise CheckpointError(f"--ckpt_path {shown}: no such file; {fix}")
    if local.is_dir():
        raise CheckpointError(f"--ckpt_path {shown}: is a folder, not a checkpoint file; {fix}")
    size = local.stat().st_size
    if size == 0:
        raise CheckpointError(f"--ckpt_path {shown}: the file is empty; {fix}")
    if not zipfile.is_zipfile(local):
        raise CheckpointError(
            f"--ckpt_path {shown}: not a PyTorch checkpoint ({size} bytes, not a complete torch.save "
            f"archive: truncated, still being copied, or another kind of file); {fix}"
        )


def download_checkpoint(url: str) -> Path:
    """``url`` in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded unless already there, as
    ``torch.hub.load_state_dict_from_url`` (Lightning's loader for URLs) keeps it."""
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    cached = folder / os.path.basename(urllib.parse.urlparse(url).path)
    if cached.is_file():
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise CheckpointError(
            f"--ckpt_path {url}: cannot download it ({reason}); check the URL and the network, or "
            "download the file and pass its path"
        ) from None
    return cached


def _pickled_code_message(path: str, err: pickle.UnpicklingError) -> str:
    """What the checkpoint holds besides tensors (torch's "Unsupported global: ..." line) and the way out."""
    found = re.search(r"Unsupported (global: GLOBAL \S+|operand \S+|class \S+)", str(err))
    detail = found.group(0) if found else "objects other than tensors and plain values"
    return (
        f"--ckpt_path {path}: the checkpoint holds pickled code ({detail}) and cannot be loaded safely: "
        "loading it could run any code. Checkpoints of `lightning-rank fit` hold only tensors and plain "
        "values; if you wrote this one yourself and trust it, pass --weights_only false"
    )


def settle_model_settings(
    saved: Mapping[str, Any], given: Mapping[str, Any], subcommand: str, shown: str
) -> tuple[dict[str, Any], list[str]]:
    """The model settings to build with: ``saved`` (the checkpoint's) overridden by ``given`` (the user's
    explicit ones) where sound; and a line per difference kept. Raises :class:`ConfigError` naming every
    difference that cannot be sound (architecture; for ``fit``, also what a resumed optimizer needs)."""
    settings = {k: v for k, v in saved.items() if not k.startswith("_")}
    refused = ARCHITECTURE | (SAME_FOR_A_RESUME if subcommand == "fit" else frozenset())
    used, wrong = [], []
    for name, value in given.items():
        if name == "backbone_args" or name not in settings:  # loss, optimizer: never in a checkpoint
            settings.setdefault(name, value)
            continue
        if _plain(settings[name]) == _plain(value):
            continue
        change = f"model.{name}: checkpoint {_shown(settings.get(name))} -> yours {_shown(value)}"
        (wrong if name in refused else used).append(change)
        settings[name] = value
    args, used_args, wrong_args = _settle_backbone_args(saved.get("backbone_args") or {}, given)
    if args is not None:
        settings["backbone_args"] = args
    used += used_args
    wrong += wrong_args
    if wrong:
        raise ConfigError(
            f"--ckpt_path {shown}: these model settings differ from the checkpoint's, and its weights "
            f"cannot be read with yours: {'; '.join(wrong)}. Drop them to use the checkpoint's (it records "
            "them), or pass another checkpoint"
            + (
                " (a resumed fit trains the same parameters: keep model.frozen)"
                if subcommand == "fit"
                else ""
            )
        )
    return settings, [f"{line} (used: yours)" for line in used] + _trust_notes(saved, given)


def _settle_backbone_args(
    saved: Mapping[str, Any], given: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, list[str], list[str]]:
    """The checkpoint's backbone_args with the user's runtime ones; differences used and refused."""
    mine = given.get("backbone_args") or {}
    args = {k: v for k, v in saved.items() if k not in USER_ONLY_BACKBONE_ARGS}
    used, wrong = [], []
    for key, value in mine.items():
        if key in RUNTIME_BACKBONE_ARGS:
            if key in saved and _plain(saved[key]) != _plain(value):
                used.append(
                    f"model.backbone_args.{key}: checkpoint {_shown(saved[key])} -> yours {_shown(value)}"
                )
            args[key] = value
            continue
        for where, old, new in _leaf_differences(f"model.backbone_args.{key}", saved.get(key), value):
            wrong.append(f"{where}: checkpoint {_shown(old)} -> yours {_shown(new)}")
    return (args if saved or mine else None), used, wrong


def _trust_notes(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """A checkpoint asking for remote code does not get it: only the user's own flag allows that."""
    asked = (saved.get("backbone_args") or {}).get("trust_remote_code")
    if asked and "trust_remote_code" not in (given.get("backbone_args") or {}):
        return [
            "model.backbone_args.trust_remote_code: checkpoint True -> yours not given (used: False; "
            "pass --model.backbone_args.trust_remote_code true yourself to run the model's own code)"
        ]
    return []


def _leaf_differences(where: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """(dotted name, old, new) per differing leaf, descending into dicts on both sides."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [
            diff
            for key in sorted(set(old) | set(new), key=str)
            if key in new  # a key the user left out keeps the checkpoint's value
            for diff in _leaf_differences(f"{where}.{key}", old.get(key), new[key])
        ]
    return [] if _plain(old) == _plain(new) else [(where, old, new)]


def _plain(value: Any) -> Any:
    """A value as a checkpoint stores it (tuples as lists, namespaces as dicts), for comparison."""
    if hasattr(value, "as_dict") and not isinstance(value, Mapping):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _shown(value: Any) -> str:
    return repr(_plain(value)) if value is not None else "not set"
