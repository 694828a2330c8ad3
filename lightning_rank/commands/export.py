"""``lightning-rank export``: a checkpoint of ``lightning-rank fit`` as a plain folder, optionally uploaded.

``--format native`` (the default) is the folder ``RerankerModule.from_pretrained`` and ``lightning-rank
rerank`` load: it holds any backbone exactly, with the input format training used. ``--format hf`` and
``--format sentence-transformers`` are for other tools and are refused where they would not give the same
scores (:mod:`lightning_rank.reranker.export_formats`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_rank.errors import ModelNotFoundError, UploadError
from lightning_rank.reranker.checkpoints import NAMED_CHECKPOINTS, missing_best, named_checkpoint
from lightning_rank.reranker.export import check_export_target, export_reranker
from lightning_rank.reranker.export_formats import Format, check_format
from lightning_rank.reranker.model_card import CardFacts


def export_checkpoint(
    ckpt_path: str,
    output: str,
    overwrite: bool = False,
    format: Format = "native",
    push_to_hub: str | None = None,
    private: bool = True,
    root_dir: str | None = None,
) -> None:
    """Export a Lightning checkpoint written by ``lightning-rank fit`` to a folder with its model card.

    Args:
        ckpt_path: the ``.ckpt`` file (loaded with ``weights_only=True``: no pickled code runs), or ``best``
            / ``last``: that checkpoint of the fit in ``root_dir``.
        output: folder to write: a new or empty folder, or an earlier export (with ``overwrite``); any other
            folder or file is refused, before the checkpoint is read. The folder appears complete.
        overwrite: replace an earlier export at ``output``.
        format: ``native`` (lightning-rank's own folder: every backbone, round-trips exactly),
            ``sentence-transformers`` (``CrossEncoder(output)``; BERT / RoBERTa families) or ``hf``
            (``AutoModelForSequenceClassification``); a format that cannot give this model's scores exactly
            is refused with the reason, and nothing is written.
        push_to_hub: a Hugging Face repository id (``user/name``) to upload the folder to once written
            (created if absent; needs ``hf auth login``); a failed upload leaves the folder as written.
        private: create the repository private (only when it does not exist yet).
        root_dir: the fit's ``--trainer.default_root_dir`` (default: the current folder), where
            ``--ckpt_path best`` and ``last`` are found, in ``checkpoints/``.
    """
    import torch

    from lightning_rank.reranker.module import RerankerModule

    check_format(format)
    if ckpt_path in NAMED_CHECKPOINTS:
        named = named_checkpoint(root_dir or Path.cwd(), ckpt_path)
        if ckpt_path == "best" and not named.is_file():
            raise missing_best(named.parent, "export")
        ckpt_path = str(named)
    if not Path(ckpt_path).is_file():
        raise ModelNotFoundError(f"checkpoint {ckpt_path} does not exist")
    check_export_target(output, overwrite)  # before the checkpoint loads: a wrong --output fails at once
    module = RerankerModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    recorded = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    folder = export_reranker(module, output, overwrite, format, card_facts(recorded))
    trained = module.input_format
    shape = (
        f"max_length {trained.max_length}, max_query_length {trained.max_query_length}, excerpt "
        f"{trained.excerpt}" + (f", passages {trained.passages}" if trained.passages is not None else "")
        if trained is not None
        else None
    )
    if format == "native":
        renders = f"scores pairs as its fit did: {shape}" if shape else "no fit settings recorded"
        renders += "" if shape else ": score() uses its defaults"
    else:
        renders = f"trained on {shape or 'settings not recorded (256 / 64 / first assumed)'}"
        renders += "; its model card says how the folder renders pairs"
    print(f"exported {ckpt_path} to {folder} as {format}; {renders}")
    if push_to_hub:
        url = upload(folder, push_to_hub, private)
        print(f"uploaded {folder} to {url}")


def card_facts(checkpoint: dict[str, Any]) -> CardFacts:
    """Training data and the monitored validation metric, as far as the checkpoint records them."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    facts = CardFacts(
        datasets=[data["train_dataset"]] if isinstance(data.get("train_dataset"), str) else [],
        val_dataset=_first_val_set(data),
    )
    for name, state in (checkpoint.get("callbacks") or {}).items():
        score = state.get("best_model_score") if name.startswith("ModelCheckpoint") else None
        monitor = state.get("monitor")
        measure = monitor.removeprefix("val/") if isinstance(monitor, str) else ""
        if score is not None and monitor != measure and "/" not in measure:  # the first set's val/<measure>
            facts.metrics[measure] = float(score)
    return facts


def _first_val_set(data: dict[str, Any]) -> str | None:
    """The validation set a checkpoint's ``val/<measure>`` metrics are of: the first one."""
    first = data.get("val_dataset") or (data.get("val_datasets") or [None])[0]
    if isinstance(first, dict):
        first = first.get("dataset")
    return first if isinstance(first, str) else None


def upload(folder: Path, repo_id: str, private: bool) -> str:
    """Upload every file of ``folder`` to the model repository ``repo_id``; its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type="model", commit_message="lightning-rank export"
        )
    except (OSError, HFValidationError) as err:  # HTTP (login, permissions), network, offline mode, a bad id
        raise UploadError(
            f"uploading {folder} to the hub repository {repo_id!r} failed ({type(err).__name__}: {err}); the "
            f"export at {folder} is complete and kept: fix the cause (`hf auth login`, network, the id) and "
            f"run `hf upload {repo_id} {folder}`"
        ) from err
    return str(getattr(commit, "repo_url", None) or repo_id)
