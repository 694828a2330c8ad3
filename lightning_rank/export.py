"""Export a trained reranker to a plain folder and load it back for inference without Lightning.

Layout of an export folder::

    reranker.json        backbone name + constructor args, template, the training's input format (token
                         budgets and excerpt: ``score()``'s defaults), format version
    backbone/            the backbone's own save_pretrained output (transformers' AutoModel loads it for
                         transformers backbones), tokenizer included; or weights.safetensors + tokenizer
                         for backbones without save_pretrained
    head.safetensors     the fp32 Linear(hidden, 1) head

Everything is safetensors or JSON: loading executes no pickled code. Writes go to a temporary sibling folder
that is renamed into place, so an interrupted export never leaves a half-written folder under the name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file, save_file

from lightning_rank.input_format import InputFormat
from lightning_rank.lora import merged_copy

if TYPE_CHECKING:
    from lightning_rank.module import RerankerModule

FORMAT_VERSION = 1
MANIFEST = "reranker.json"


def export_reranker(module: RerankerModule, folder: str | os.PathLike) -> Path:
    """Write ``module`` (backbone, head, tokenizer, config) to ``folder``, replacing it atomically."""
    folder = Path(folder).expanduser().resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
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
        if module.input_format is not None:
            manifest["input_format"] = module.input_format.as_dict()
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def load_reranker(folder: str | os.PathLike, **overrides: Any) -> RerankerModule:
    """Rebuild the exported reranker (in eval mode); ``overrides`` update the backbone's arguments."""
    from lightning_rank.module import RerankerModule

    folder = Path(folder).expanduser().resolve()
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} is not a lightning-rank export: {MANIFEST} is missing")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{manifest_path}: format_version {manifest.get('format_version')} is not supported")
    args = dict(manifest["backbone_args"])
    for key in ("pretrained", "tokenizer"):
        if args.get(key) == "backbone":
            args[key] = str(folder / "backbone")
    if manifest["backbone_weights"] == "state_dict":
        args.pop("pretrained", None)
    args.update(overrides)
    module = RerankerModule(backbone=manifest["backbone"], backbone_args=args)
    if manifest["backbone_weights"] == "state_dict":
        module.backbone.load_state_dict(load_file(folder / "backbone" / "weights.safetensors"))
    module.head.load_state_dict(load_file(folder / "head.safetensors"))
    if manifest.get("input_format"):  # absent from exports of untrained models and from older exports
        try:
            module.input_format = InputFormat(**manifest["input_format"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{manifest_path}: input_format {manifest['input_format']!r}: {err}") from None
    return module.eval()


def export_checkpoint(ckpt_path: str, output: str) -> None:
    """Export a Lightning checkpoint written by ``lightning-rank fit`` to a plain folder.

    Args:
        ckpt_path: the ``.ckpt`` file (loaded with ``weights_only=True``: no pickled code runs).
        output: folder to write (replaced atomically if it exists).
    """
    from lightning_rank.module import RerankerModule

    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    module = RerankerModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    folder = export_reranker(module, output)
    trained = module.input_format
    renders = (
        f"scores pairs as its fit did: max_length {trained.max_length}, max_query_length "
        f"{trained.max_query_length}, excerpt {trained.excerpt}"
        if trained is not None
        else "no fit settings recorded: score() uses its defaults"
    )
    print(f"exported {ckpt_path} to {folder}; {renders}")
