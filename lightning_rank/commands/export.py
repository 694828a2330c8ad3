"""``lightning-rank export``: a checkpoint of ``lightning-rank fit`` as a plain folder."""

from __future__ import annotations

from pathlib import Path

from lightning_rank.errors import ModelNotFoundError
from lightning_rank.reranker.export import check_export_target, export_reranker


def export_checkpoint(ckpt_path: str, output: str, overwrite: bool = False) -> None:
    """Export a Lightning checkpoint written by ``lightning-rank fit`` to a plain folder.

    Args:
        ckpt_path: the ``.ckpt`` file (loaded with ``weights_only=True``: no pickled code runs).
        output: folder to write: a new or empty folder, or an earlier export (with ``overwrite``); any other
            folder or file is refused, before the checkpoint is read. The folder appears complete.
        overwrite: replace an earlier export at ``output``.
    """
    from lightning_rank.reranker.module import RerankerModule

    if not Path(ckpt_path).is_file():
        raise ModelNotFoundError(f"checkpoint {ckpt_path} does not exist")
    check_export_target(output, overwrite)  # before the checkpoint loads: a wrong --output fails at once
    module = RerankerModule.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    folder = export_reranker(module, output, overwrite)
    trained = module.input_format
    renders = (
        f"scores pairs as its fit did: max_length {trained.max_length}, max_query_length "
        f"{trained.max_query_length}, excerpt {trained.excerpt}"
        if trained is not None
        else "no fit settings recorded: score() uses its defaults"
    )
    print(f"exported {ckpt_path} to {folder}; {renders}")
