"""Find, read and write Mamba checkpoints in both layouts.

- ``mamba_ssm``: ``config.json`` with ``d_model``/``n_layer``/``ssm_cfg`` and ``pytorch_model.bin`` holding
  ``backbone.embedding.weight``, ... (``state-spaces/mamba-130m``, ``state-spaces/mamba2-130m``, ...).
- ``transformers``: ``config.json`` with ``model_type`` ``mamba``/``mamba2`` and ``model.safetensors`` (or
  ``pytorch_model.bin``) holding ``backbone.embeddings.weight``, ... (``state-spaces/mamba-130m-hf``).

The layout is detected from ``config.json``; inside the model everything uses mamba_ssm's names. An LM head
(``lm_head.weight``) is ignored: rerankers pool hidden states.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lightning_rank.backbones import hub
from lightning_rank.backbones.mamba.config import Mamba1Config, Mamba2Config, MambaConfig, round_up
from lightning_rank.errors import ConfigError

Layout = Literal["mamba_ssm", "transformers"]
Generation = Literal["mamba1", "mamba2"]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
#: What the Mamba papers tokenise with; the state-spaces mamba_ssm checkpoints ship no tokenizer.
DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "model*.safetensors"]
_TRANSFORMERS_PREFIX = "backbone.embeddings."
_MAMBA_SSM_PREFIX = "backbone.embedding."


@dataclass
class Checkpoint:
    """A checkpoint read from a folder: its layout, generation, config and state dict (mamba_ssm names)."""

    layout: Layout
    generation: Generation
    config: MambaConfig
    state_dict: dict[str, Tensor]


def resolve_pretrained(source: str) -> Path:
    """A local folder, or the snapshot folder of a hub id with its config, tokenizer and weights, by the
    policy of :mod:`lightning_rank.backbones.hub` (offline and not cached: a fast error naming the fix)."""
    folder = hub.local_folder(source, "pretrained", _HUB_PATTERNS)
    if not any(folder.glob("model*.safetensors")) and not Path(source).expanduser().is_dir():
        folder = hub.snapshot(source, "pretrained", ["pytorch_model*.bin"])
    return folder


def tokenizer_source(folder: Path) -> str:
    """The folder itself when it ships a tokenizer, else :data:`DEFAULT_TOKENIZER`."""
    return str(folder) if any((folder / name).exists() for name in _TOKENIZER_FILES) else DEFAULT_TOKENIZER


def detect(raw: dict[str, Any]) -> tuple[Layout, Generation]:
    """Layout and generation from a ``config.json`` dictionary."""
    model_type = raw.get("model_type")
    if model_type in ("mamba", "mamba2"):
        return "transformers", "mamba1" if model_type == "mamba" else "mamba2"
    if "d_model" in raw:
        layer = (raw.get("ssm_cfg") or {}).get("layer", "Mamba1")
        return "mamba_ssm", "mamba2" if layer == "Mamba2" else "mamba1"
    raise ConfigError(
        f"config.json has neither model_type 'mamba'/'mamba2' (transformers) nor d_model (mamba_ssm): "
        f"keys {sorted(raw)}"
    )


def _read_weights(folder: Path) -> dict[str, Tensor]:
    """All tensors of ``model.safetensors`` / ``pytorch_model.bin``, sharded or not."""
    for index_name, loader in (
        (SAFETENSORS_NAME + ".index.json", load_file),
        (BIN_NAME + ".index.json", _load_bin),
    ):
        index = folder / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(loader(str(folder / shard)))
            return state
    if (folder / SAFETENSORS_NAME).exists():
        return load_file(str(folder / SAFETENSORS_NAME))
    if (folder / BIN_NAME).exists():
        return _load_bin(str(folder / BIN_NAME))
    raise FileNotFoundError(f"{folder} has no {SAFETENSORS_NAME} or {BIN_NAME}")


def _load_bin(path: str) -> dict[str, Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def to_mamba_ssm_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename transformers' keys to mamba_ssm's and drop the LM head (the rest already agree)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("lm_head."):
            continue
        if not key.startswith("backbone."):  # a bare MixerModel state dict
            key = "backbone." + key
        out[key.replace(_TRANSFORMERS_PREFIX, _MAMBA_SSM_PREFIX, 1)] = value
    return out


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read config and weights of either layout from ``folder``."""
    config_path = folder / CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}")
    raw = json.loads(config_path.read_text())
    layout, generation = detect(raw)
    cls = Mamba2Config if generation == "mamba2" else Mamba1Config
    if layout == "mamba_ssm":
        config = cls.from_mamba_ssm(raw)
        config.vocab_size = round_up(config.vocab_size, config.pad_vocab_size_multiple)  # as mamba_ssm pads
    else:
        config = cls.from_transformers(raw)
    return Checkpoint(layout, generation, config, to_mamba_ssm_names(_read_weights(folder)))


def save_checkpoint(folder: Path, config: MambaConfig, state: dict[str, Tensor], layout: Layout) -> None:
    """Write ``config.json`` and the weights of ``state`` (mamba_ssm names) in ``layout``."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if layout == "mamba_ssm":
        (folder / CONFIG_NAME).write_text(json.dumps(config.to_mamba_ssm(), indent=2) + "\n")
        # mamba_ssm's MambaLMHeadModel loads strictly and expects its (tied) LM head in the state dict.
        torch.save({**state, "lm_head.weight": state[_MAMBA_SSM_PREFIX + "weight"]}, folder / BIN_NAME)
        return
    if layout != "transformers":
        raise ConfigError(f"layout must be 'mamba_ssm' or 'transformers', not {layout!r}")
    from transformers import Mamba2Config as HFMamba2Config
    from transformers import MambaConfig as HFMambaConfig

    hf_cls = HFMamba2Config if isinstance(config, Mamba2Config) else HFMambaConfig
    hf_config = hf_cls(**config.to_transformers())
    hf_config.architectures = [
        "Mamba2ForCausalLM" if isinstance(config, Mamba2Config) else "MambaForCausalLM"
    ]
    hf_config.save_pretrained(folder)
    renamed = {k.replace(_MAMBA_SSM_PREFIX, _TRANSFORMERS_PREFIX, 1): v for k, v in state.items()}
    save_file(renamed, str(folder / SAFETENSORS_NAME), metadata={"format": "pt"})
