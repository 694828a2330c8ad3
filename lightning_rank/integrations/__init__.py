"""Adapters that put a lightning-rank reranker into other toolkits' pipelines; each needs its own extra."""
