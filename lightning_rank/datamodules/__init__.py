"""Data: ir_datasets collections in, tokenized training groups and rerank batches out."""

from lightning_rank.datamodules.collections import (
    DEMO_ID,
    LocalFiles,
    load_dataset,
    register_beir_folder,
    register_demo,
    register_local,
)
from lightning_rank.datamodules.datamodule import RerankDataModule

__all__ = [
    "DEMO_ID",
    "LocalFiles",
    "RerankDataModule",
    "load_dataset",
    "register_beir_folder",
    "register_demo",
    "register_local",
]
