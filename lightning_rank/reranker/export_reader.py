"""Read an export folder (local, or a Hugging Face hub id's snapshot) back, checked, for inference
without Lightning: :func:`read_export` gives an :class:`ExportedReranker`, from which
``RerankerModule.from_pretrained`` builds the module. The layout and how it is written: :mod:`.export`.

No Python file of the folder runs unless the caller asks (``trust_remote_code=True``), whatever its
``reranker.json`` says.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from lightning_rank.backbones import hub
from lightning_rank.backbones.classifier_heads import HeadForm
from lightning_rank.backbones.registry import is_import_path
from lightning_rank.errors import ConfigError, ModelNotFoundError, UntrustedCodeError
from lightning_rank.reranker.export import FOREIGN_MARKER, FORMAT_VERSION, MANIFEST, read_json
from lightning_rank.text.input_format import InputFormat


@dataclass
class ExportedReranker:
    """What an export folder holds, read and checked: enough to rebuild the reranker without Lightning."""

    backbone: str  # entry-point name or import path, as the module's ``backbone``
    backbone_args: dict[str, Any]  # its constructor arguments, paths resolved into the folder
    backbone_state: dict[str, Tensor] | None  # None when the backbone loads its own weights (save_pretrained)
    head_state: dict[str, Tensor]  # the fp32 head's state
    input_format: InputFormat | None  # None in exports of untrained models and in older exports
    head_form: HeadForm | None = None  # a checkpoint's classifier; None: the Linear(hidden, 1) head


def locate_export(name: str | os.PathLike) -> Path:
    """An export's folder: ``name`` itself when it exists, else a Hugging Face hub id's snapshot (downloaded
    while the hub can be reached; offline, the cached one or :class:`HubModelNotCachedError` naming it)."""
    path = Path(name).expanduser()
    return (path if path.exists() else hub.local_folder(os.fspath(name), "model")).resolve()


def _other(folder: Path) -> str:
    """What an export of another format is, and what loads it."""
    marker = read_json(folder / FOREIGN_MARKER)
    kind = marker.get("format") if isinstance(marker, dict) else None
    if kind not in ("hf", "sentence-transformers"):
        return ""
    loader = "sentence_transformers.CrossEncoder" if kind == "sentence-transformers" else "transformers"
    return (
        f"; it is a --format {kind} export, which {loader} loads: export the checkpoint with --format native "
        "for lightning-rank"
    )


def read_export(
    folder: str | os.PathLike, trust_remote_code: bool = False, **overrides: Any
) -> ExportedReranker:
    """Read the export at ``folder`` (a local folder or a hub id); ``overrides`` update the backbone's
    arguments.

    Python files of the folder (a backbone config's ``auto_map``) run only with ``trust_remote_code=True``
    from the caller: a manifest that asks for it without the caller's flag is refused, never obeyed."""
    folder = locate_export(folder)
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
            f"{_other(manifest_path.parent)}"
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
