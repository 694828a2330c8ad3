"""Subcommands that are one function each: bm25, dense, rerank, fuse, export, backbones."""
