"""Checks that run before Lightning is imported, so that the commonest mistakes fail in well under a second.

Importing Lightning and torch takes seconds; a misspelled backbone name should not. This reads only the
``--config`` files and ``--model.backbone`` overrides of the command line (the full parser validates
everything else afterwards, with the same rules).
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from lightning_rank.backbones.registry import check_backbone_name


def backbone_from_argv(argv: Sequence[str]) -> str | None:
    """The backbone a command line selects (last one wins, as in LightningCLI), or None if unknown here."""
    name: str | None = None
    args = list(argv)
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if key == "--config":
            name = _backbone_in_config(value) or name
        elif key == "--model.backbone":
            name = value or name
    return name


def _backbone_in_config(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # the full parser reports unreadable or malformed configs with their location
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict):
        model = model.get("init_args", model)
        backbone = model.get("backbone")
        if isinstance(backbone, str):
            return backbone
    return None


def check_argv(argv: Sequence[str]) -> None:
    """Raise ``UnknownBackboneError`` if the command line names a backbone that is not installed."""
    name = backbone_from_argv(argv)
    if name is not None:
        check_backbone_name(name)
