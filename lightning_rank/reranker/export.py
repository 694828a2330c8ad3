"""Export a trained reranker to a plain folder (:mod:`.export_reader` reads one back).

:func:`export_reranker` writes the folder from the module's parts (so this file never imports the module).

Layout of an export folder::

    reranker.json        backbone name + constructor args, template, the training's input format (token
                         budgets and excerpt: ``score()``'s defaults), format version
    backbone/            the backbone's own save_pretrained output (transformers' AutoModel loads it for
                         transformers backbones), tokenizer included; or weights.safetensors + tokenizer
                         for backbones without save_pretrained
    head.safetensors     the fp32 head: Linear(hidden, 1), or a checkpoint's classifier (its form in
                         reranker.json's ``head``)
    README.md            the model card (:mod:`.model_card`)

That is ``--format native``, the default: it loads back exactly for every backbone, with the input format.
``--format hf`` and ``--format sentence-transformers`` (:mod:`.export_formats`) write a transformers
sequence-classification folder instead, with :data:`FOREIGN_MARKER` listing what the export wrote.

Everything is safetensors or JSON (an export that would hold a pickle is refused): loading executes no
pickled code, and no Python file of the folder runs unless the caller asks (``trust_remote_code=True``),
whatever ``reranker.json`` says. Writes go to a temporary sibling folder that is moved into place, so an
interrupted export never leaves a half-written folder under the name. An export creates a folder or fills
an empty one; it replaces only an earlier export (``reranker.json`` with a ``format_version``, beside
``backbone/``, ``head.safetensors`` and ``README.md`` as written and nothing else; or a folder holding only
what its :data:`FOREIGN_MARKER` lists) and only when asked (``overwrite``); any other folder or file is
refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from safetensors.torch import save_file
from torch import nn

from lightning_rank.backbones.classifier_heads import HeadForm
from lightning_rank.errors import ConfigError, OutputError
from lightning_rank.reranker.export_formats import check_format, prepare_classifier
from lightning_rank.reranker.lora import merged_copy
from lightning_rank.reranker.model_card import CARD, CardFacts, model_card
from lightning_rank.text.input_format import InputFormat

FORMAT_VERSION = 1
MANIFEST = "reranker.json"
HEAD = "head.safetensors"
BACKBONE = "backbone"
#: everything a native export writes at its top level: a folder holding only these (manifest included) is one
EXPORT_ENTRIES = frozenset({MANIFEST, BACKBONE, HEAD, CARD})
#: in hf / sentence-transformers exports: the format and the top-level entries the export wrote
FOREIGN_MARKER = "lightning_rank_export.json"
MARKERS = (MANIFEST, FOREIGN_MARKER)
#: the marker's record of the model card it wrote
CARD_DIGEST = "card_sha256"
#: suffixes of pickled files, which no export holds
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})


class Exportable(Protocol):
    """What an export reads from a reranker (RerankerModule has it): its parts and how it was built."""

    backbone: nn.Module
    head: nn.Module
    hparams: Any  # ``backbone`` and ``backbone_args``, as the module was built with
    input_format: InputFormat | None


def is_export(folder: Path, check_card: bool = True) -> bool:
    """Whether ``folder`` is an earlier export: its manifest (or marker) has an integer ``format_version``,
    it holds nothing an export does not write, and (``check_card``) its model card is as written."""
    names = {p.name for p in folder.iterdir()}
    marker = read_json(folder / FOREIGN_MARKER) if FOREIGN_MARKER in names else None
    if isinstance(marker, dict) and isinstance(marker.get("entries"), list):
        allowed = {*marker["entries"], FOREIGN_MARKER}
    elif MANIFEST in names:
        allowed, marker = EXPORT_ENTRIES, read_json(folder / MANIFEST)
    else:
        return False
    if not isinstance(marker, dict) or not names <= allowed:
        return False
    if check_card and CARD in names and marker.get(CARD_DIGEST) != _digest(folder / CARD):
        return False
    version = marker.get("format_version")
    return isinstance(version, int) and not isinstance(version, bool)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


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
    if not is_export(folder) and is_export(folder, check_card=False):
        raise OutputError(
            f"--output {folder} holds an earlier export whose model card ({CARD}) was edited since: the "
            "card is yours now, and the folder is never replaced. Move the card out of it, or pass a new "
            "folder"
        )
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


def export_reranker(
    module: Exportable,
    folder: str | os.PathLike,
    overwrite: bool = False,
    format: str = "native",
    facts: CardFacts | None = None,
) -> Path:
    """Write ``module`` to ``folder`` in ``format`` (native: backbone, head, tokenizer, config; or a
    sequence-classification folder: :mod:`.export_formats`) with its model card (``facts``: what the
    checkpoint records of its training). ``folder`` must be absent, empty, or an earlier export (replaced
    only with ``overwrite``: :func:`check_export_target`); it appears complete. A format that cannot hold
    this reranker exactly is refused before anything is written."""
    check_format(format)
    folder = check_export_target(folder, overwrite)
    backbone = merged_copy(module.backbone)  # LoRA adapters folded into plain weights
    if format == "native":
        rendering = "RerankerModule.score and `lightning-rank rerank` render pairs so by themselves"
        write = _native_writer(module, backbone)
    else:
        write, rendering = prepare_classifier(
            backbone, module.head, module.input_format, format == "sentence-transformers"
        )
    card = model_card(
        str(module.hparams.get("backbone")),
        dict(module.hparams.get("backbone_args") or {}),
        backbone.template.text,
        module.input_format,
        format,
        facts or CardFacts(),
        rendering,
        folder.name,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(staging)
        card.save(staging / CARD)
        _refuse_pickles(staging, module.hparams.get("backbone"))
        marker_path = staging / (MANIFEST if format == "native" else FOREIGN_MARKER)
        marker = read_json(marker_path) if format == "native" else {"format_version": FORMAT_VERSION}
        if format != "native":
            marker.update(format=format, entries=sorted(p.name for p in staging.iterdir()))
        marker[CARD_DIGEST] = _digest(staging / CARD)  # a card edited since is the user's: never replaced
        marker_path.write_text(json.dumps(marker, indent=2) + "\n")
        _move_into(staging, check_export_target(folder, overwrite))  # again: it may have changed meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _refuse_pickles(staging: Path, backbone: Any) -> None:
    """An export holds no pickle: a backbone whose ``save_pretrained`` writes one is refused."""
    pickles = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ConfigError(
            f"backbone {backbone!r} saved {', '.join(pickles)}: pickled files, which an export never holds "
            "(loading them can run code). Make its save_pretrained write safetensors"
        )


def _native_writer(module: Exportable, backbone: nn.Module) -> Callable[[Path], None]:
    return lambda staging: _write_export(module, backbone, staging)


def _write_export(module: Exportable, backbone: nn.Module, staging: Path) -> None:
    """Write the native export's files into the empty folder ``staging``."""
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
    outgoing = sorted(folder.iterdir(), key=lambda p: p.name not in MARKERS)
    incoming = sorted(staging.iterdir(), key=lambda p: p.name in MARKERS)
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
