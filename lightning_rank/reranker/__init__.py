"""The reranker: its LightningModule, what it trains with, and its export folder."""
