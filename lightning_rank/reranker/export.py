"""Export a trained reranker to a plain folder, and read one back for inference without Lightning.

:func:`export_reranker` writes the folder from the module's parts; :func:`read_export` reads and checks it
into an :class:`ExportedReranker`, from which ``RerankerModule.from_pretrained`` builds the module (so this
file never imports the module).

Layout of an export folder::

    reranker.json        backbone name + constructor args, template, the training's input format (token
                         budgets and excerpt: ``score()``'s defaults), format version
    backbone/            the backbone's own save_pretrained output (transformers' AutoModel loads it for
                         transformers backbones), tokenizer included; or weights.safetensors + tokenizer
                         for backbones without save_pretrained
    head.safetensors     the fp32 head: Linear(hidden, 1), or a checkpoint's classifier (its form in
                         reranker.json's ``head``)

Everything is safetensors or JSON: loading executes no pickled code, and no Python file of the folder runs
unless the caller asks (``trust_remote_code=True``), whatever ``reranker.json`` says. Writes go to a
temporary sibling folder that is moved into place, so an interrupted export never leaves a half-written
folder under the name. An export creates a folder or fills an empty one; it replaces only an earlier export
(``reranker.json`` with a ``format_version``, beside ``backbone/`` and ``head.safetensors`` and nothing else)
and only when asked (``overwrite``); any other folder or file is refused before anything is written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lightning_rank.backbones.classifier_heads import HeadForm
from lightning_rank.backbones.registry import is_import_path
from lightning_rank.errors import ConfigError, ModelNotFoundError, OutputError, UntrustedCodeError
from lightning_rank.reranker.lora import merged_copy
from lightning_rank.text.input_format import InputFormat

FORMAT_VERSION = 1
MANIFEST = "reranker.json"
HEAD = "head.safetensors"
BACKBONE = "backbone"
#: everything an export writes at its top level: a folder holding only these (manifest included) is one
EXPORT_ENTRIES = frozenset({MANIFEST, BACKBONE, HEAD})


class Exportable(Protocol):
    """What an export reads from a reranker (RerankerModule has it): its parts and how it was built."""

    backbone: nn.Module
    head: nn.Module
    hparams: Any  # ``backbone`` and ``backbone_args``, as the module was built with
    input_format: InputFormat | None


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is an earlier export: its manifest has an integer ``format_version`` and it holds
    nothing an export does not write."""
    names = {p.name for p in folder.iterdir()}
    if MANIFEST not in names or not names <= EXPORT_ENTRIES:
        return False
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    return isinstance(version, int) and not isinstance(version, bool)


def check_export_target(folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """``folder`` (resolved) when an export may be written there: it is absent, an empty folder, or an
    earlier export with ``overwrite``. Anything else raises :class:`OutputError` naming what it holds."""
    folder = Path(folder).expanduser().resolve()
    blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"--output {folder}: {blocker} is a file, not a folder; pass a folder path")
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise OutputError(
            f"--output {folder} is an existing file, not a folder; an export is a folder. The file was left "
            "as it is: pass a new or empty folder"
        )
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise OutputError(f"--output {folder} cannot be read ({err.strerror}); pass another folder") from None
    if not names:
        return folder
    if not is_export(folder):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise OutputError(
            f"--output {folder} is not an earlier lightning-rank export and is never replaced (it holds "
            f"{shown}); an export replaces only a folder holding its own {', '.join(sorted(EXPORT_ENTRIES))}"
            ". Pass a new or empty folder"
        )
    if not overwrite:
        raise OutputError(
            f"--output {folder} holds an earlier export; pass --overwrite true (overwrite=True from Python) "
            "to replace it, or a new folder"
        )
    return folder


def export_reranker(module: Exportable, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``module`` (backbone, head, tokenizer, config) to ``folder``, which must be absent, empty, or an
    earlier export (replaced only with ``overwrite``: :func:`check_export_target`); it appears complete."""
    folder = check_export_target(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_export(module, staging)
        _move_into(staging, check_export_target(folder, overwrite))  # again: it may have changed meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_export(module: Exportable, staging: Path) -> None:
    """Write the export's files into the empty folder ``staging``."""
    backbone = merged_copy(module.backbone)  # LoRA adapters folded into plain weights
    args = dict(module.hparams.get("backbone_args") or {})
    if hasattr(backbone, "save_pretrained"):
        backbone.save_pretrained(staging / "backbone")
        args.update(pretrained="backbone", tokenizer="backbone", config=None)
        weights = "save_pretrained"
    else:
        (staging / "backbone").mkdir()
        state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
        save_file(state, staging / "backbone" / "weights.safetensors")
        backbone.tokenizer.save_pretrained(staging / "backbone")
        args["tokenizer"] = "backbone"
        weights = "state_dict"
    head = {k: v.detach().float().cpu().contiguous() for k, v in module.head.state_dict().items()}
    save_file(head, staging / "head.safetensors")
    manifest = {
        "format_version": FORMAT_VERSION,
        "backbone": module.hparams.get("backbone"),
        "backbone_args": args,
        "backbone_weights": weights,
        "template": backbone.template.text,
    }
    form = getattr(module.head, "form", None)
    if isinstance(form, HeadForm):
        manifest["head"] = form.as_dict()
    if module.input_format is not None:
        manifest["input_format"] = module.input_format.as_dict()
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _move_into(staging: Path, folder: Path) -> None:
    """Put the export in ``staging`` at ``folder``: one rename when it is absent, else entry by entry into the
    folder itself (which keeps its identity: it may be the working directory), the old manifest out first
    and the new one in last, so the folder never reads as an export of mixed files; a failure puts the old
    entries back."""
    if not folder.exists():
        staging.rename(folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
    outgoing = sorted(folder.iterdir(), key=lambda p: p.name != MANIFEST)
    incoming = sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST)
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for entry in outgoing:
            entry.rename(old / entry.name)
            moved_out.append(entry.name)
        for entry in incoming:
            entry.rename(folder / entry.name)
            moved_in.append(entry.name)
    except BaseException:
        for name in reversed(moved_in):
            (folder / name).rename(staging / name)
        for name in reversed(moved_out):
            (old / name).rename(folder / name)
        old.rmdir()  # empty again; had a rename back failed, the old entries would still be in it
        raise
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class ExportedReranker:
    """What an export folder holds, read and checked: enough to rebuild the reranker without Lightning."""

    backbone: str  # entry-point name or import path, as the module's ``backbone``
    backbone_args: dict[str, Any]  # its constructor arguments, paths resolved into the folder
    backbone_state: dict[str, Tensor] | None  # None when the backbone loads its own weights (save_pretrained)
    head_state: dict[str, Tensor]  # the fp32 head's state
    input_format: InputFormat | None  # None in exports of untrained models and in older exports
    head_form: HeadForm | None = None  # a checkpoint's classifier; None: the Linear(hidden, 1) head


def read_export(
    folder: str | os.PathLike, trust_remote_code: bool = False, **overrides: Any
) -> ExportedReranker:
    """Read the export at ``folder``; ``overrides`` update the backbone's arguments.

    Python files of the folder (a backbone config's ``auto_map``) run only with ``trust_remote_code=True``
    from the caller: a manifest that asks for it without the caller's flag is refused, never obeyed."""
    folder = Path(folder).expanduser().resolve()
    manifest_path = folder / MANIFEST
    manifest = _read_manifest(manifest_path)
    own_weights = manifest["backbone_weights"] == "state_dict"
    for weights in ("head.safetensors", *(["backbone/weights.safetensors"] if own_weights else [])):
        if not (folder / weights).is_file():
            raise ModelNotFoundError(f"{folder}: {weights} is missing; export the checkpoint again")
    args = dict(manifest["backbone_args"])
    if args.pop("trust_remote_code", False) and not trust_remote_code:
        raise UntrustedCodeError(_untrusted_message(folder, manifest_path))
    if trust_remote_code:
        args["trust_remote_code"] = True
    for key in ("pretrained", "tokenizer"):
        if args.get(key) == "backbone":
            args[key] = str(folder / "backbone")
    if own_weights:
        args.pop("pretrained", None)
    args.update(overrides)
    if not trust_remote_code:
        _check_backbone_outside(manifest["backbone"], folder, manifest_path)
    return ExportedReranker(
        backbone=manifest["backbone"],
        backbone_args=args,
        backbone_state=load_file(folder / "backbone" / "weights.safetensors") if own_weights else None,
        head_state=load_file(folder / "head.safetensors"),
        input_format=_input_format(manifest, manifest_path),
        head_form=HeadForm.from_dict(manifest["head"], manifest_path) if "head" in manifest else None,
    )


def _read_manifest(manifest_path: Path) -> dict[str, Any]:
    """An export's manifest, or an error naming what is wrong with it (absent, not JSON, not an object,
    another format version, a key missing) and that exporting again mends it."""
    if not manifest_path.is_file():
        raise ModelNotFoundError(
            f"{manifest_path.parent} is not a lightning-rank export: {MANIFEST} is missing"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{manifest_path}: not valid JSON ({err}); export the checkpoint again with lightning-rank export"
        ) from err
    if not isinstance(manifest, dict):
        raise ConfigError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{manifest_path}: format_version {manifest.get('format_version')} is not supported"
        )
    missing = [key for key in ("backbone", "backbone_args", "backbone_weights") if key not in manifest]
    if missing or not isinstance(manifest["backbone_args"], dict):
        raise ConfigError(
            f"{manifest_path}: "
            + (f"missing {', '.join(missing)}" if missing else "backbone_args is not an object")
            + "; export the checkpoint again with lightning-rank export"
        )
    return manifest


def _input_format(manifest: dict[str, Any], manifest_path: Path) -> InputFormat | None:
    """The training's input format the manifest records, if any; a malformed one is named."""
    if not manifest.get("input_format"):
        return None
    try:
        return InputFormat(**manifest["input_format"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{manifest_path}: input_format {manifest['input_format']!r}: {err}") from None


def _check_backbone_outside(name: str, folder: Path, manifest_path: Path) -> None:
    """A manifest's backbone import path must not name a module of the folder itself (importable when the
    folder is on ``sys.path``, e.g. ``python -m`` run from it): that is the folder's own code."""
    if not is_import_path(name):
        return
    top = name.partition(":")[0].split(".")[0] if ":" in name else name.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return  # not importable: the registry reports it when the backbone is built
    places = [spec.origin] if spec and spec.origin else []
    places += list(spec.submodule_search_locations or []) if spec else []
    if any(Path(p).resolve().is_relative_to(folder) for p in places):
        raise UntrustedCodeError(
            f"{manifest_path}: backbone {name!r} is Python code inside {folder} ({top}); it runs only when "
            "you ask for it: read it, then pass --trust_remote_code true to `lightning-rank rerank` "
            "(trust_remote_code=True to RerankerModule.from_pretrained)"
        )


def _untrusted_message(folder: Path, manifest_path: Path) -> str:
    code = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
    ships = f"; it ships {', '.join(code[:5])}" if code else ""
    return (
        f"{manifest_path} sets trust_remote_code: true: loading this export would run Python code from "
        f"{folder}{ships}. Code from a model folder runs only when you ask for it: read that code, then pass "
        "--trust_remote_code true to `lightning-rank rerank` (trust_remote_code=True to "
        "RerankerModule.from_pretrained)"
    )
