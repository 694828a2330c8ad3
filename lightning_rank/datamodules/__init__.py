"""Data: ir_datasets collections in, tokenized training groups and rerank batches out."""

from lightning_rank.datamodules.collections import DEMO_ID, load_dataset, register_beir_folder, register_demo
from lightning_rank.datamodules.datamodule import RerankDataModule

__all__ = ["DEMO_ID", "RerankDataModule", "load_dataset", "register_beir_folder", "register_demo"]
