"""A PyTerrier transformer that rescores a pipeline's candidates with a lightning-rank reranker, so
``bm25 >> pt.text.get_text(dataset, "text") >> LightningRankReranker(export)`` runs in ``pt.Experiment``.

Pairs are rendered as the fit rendered them (:meth:`RerankerModule.score` reads the recorded input format);
a model whose template shows first-stage scores reads each candidate's incoming ``score``, scaled per query
over the frame's candidates, as ``lightning-rank rerank`` scales a run cut to its ``--depth``. PyTerrier is
the ``pyterrier`` extra; importing this module without it is an :class:`InputError` naming the install.
"""

from __future__ import annotations

import os
from typing import Any

from lightning_rank.errors import DataError, InputError, check_at_least
from lightning_rank.reranker.module import RerankerModule
from lightning_rank.text.score_text import score_texts

INSTALL_HINT = "pip install 'lightning-rank[pyterrier]'"

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as err:
    raise InputError(
        f"lightning_rank.integrations.pyterrier needs PyTerrier, which is not installed: {INSTALL_HINT}"
    ) from err


class LightningRankReranker(pt.Transformer):
    """Rescore each (query, candidate text) row of a result frame; the other columns pass through.

    Args:
        model: an export folder (``lightning-rank export``), anything ``RerankerModule.from_pretrained``
            loads, or a ``RerankerModule`` (put in eval mode here).
        batch_size: pairs scored per forward pass.
        text_field: the column holding each candidate's text.
        device: torch device; default: a loaded model goes to CUDA when available, else the CPU, and a
            given module stays where it is.
        trust_remote_code: passed to ``from_pretrained`` (run Python code the export folder ships).
    """

    def __init__(
        self,
        model: str | os.PathLike | RerankerModule,
        batch_size: int = 64,
        text_field: str = "text",
        device: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        check_at_least("batch_size", batch_size, 1)
        if isinstance(model, RerankerModule):
            module = model
        else:
            module = RerankerModule.from_pretrained(model, trust_remote_code=trust_remote_code)
            if device is None:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = (module.to(device) if device is not None else module).eval()
        self.batch_size = batch_size
        self.text_field = text_field

    def __repr__(self) -> str:
        backbone = self.model.hparams.get("backbone")
        return f"LightningRankReranker({backbone!r}, text_field={self.text_field!r})"

    def _needs_score(self) -> bool:
        return self.model.backbone.template.needs_score

    def _required(self) -> list[str]:
        return ["qid", "query", self.text_field, *(["score"] if self._needs_score() else [])]

    def transform_inputs(self) -> list[list[str]]:
        """The columns a frame must have (PyTerrier's inspection protocol: schematics, Experiment checks)."""
        return [self._required()]

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        """The input's columns with ``score`` and ``rank`` (PyTerrier's inspection protocol)."""
        pt.validate.columns(input_columns, includes=self._required())
        return [*input_columns, *(c for c in ("score", "rank") if c not in input_columns)]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """``inp`` with ``score`` replaced by the reranker's and ``rank`` recomputed per query."""
        self._check_columns(inp)
        missing = inp[self.text_field].isna() | inp["query"].isna()
        if missing.any():
            rows = inp.loc[missing, [c for c in ("qid", "docno") if c in inp.columns]].head(5)
            raise DataError(
                f"LightningRankReranker: {int(missing.sum())} rows have no query or no {self.text_field!r} "
                f"text, e.g. {rows.to_dict(orient='records')}: fill them or drop those rows before the "
                "reranker"
            )
        scores = self.model.score(
            inp["query"].astype(str).tolist(),
            inp[self.text_field].astype(str).tolist(),
            batch_size=self.batch_size,
            first_stage=self._first_stage_texts(inp) if self._needs_score() else None,
        )
        out = inp.assign(score=scores.double().numpy())  # by position, whatever the index
        return pt.model.add_ranks(out)

    def _check_columns(self, inp: pd.DataFrame) -> None:
        absent = [c for c in self._required() if c not in inp.columns]
        if not absent:
            return
        have = f"the frame has {list(inp.columns)}"
        if self.text_field in absent:
            fix = (
                f"add the candidates' text before the reranker, e.g. `retriever >> pt.text.get_text(dataset, "
                f"{self.text_field!r}) >> reranker`, or pass text_field= the column that holds it"
            )
        elif "score" in absent:
            fix = "this model's template shows first-stage scores: rerank a retriever's scored results"
        else:
            fix = "rerank a retriever's results over a topics frame (qid, query)"
        raise DataError(f"LightningRankReranker needs the column(s) {absent}, but {have}: {fix}")

    def _first_stage_texts(self, inp: pd.DataFrame) -> list[str]:
        """Each row's incoming score as the template shows it: scaled 0-100 within its query's rows."""
        by_query: dict[Any, dict[str, float]] = {}
        for row, (qid, score) in enumerate(zip(inp["qid"], inp["score"], strict=True)):
            by_query.setdefault(qid, {})[str(row)] = float(score)
        depth = max((len(rows) for rows in by_query.values()), default=1)
        shown = score_texts(by_query, depth)
        return [shown[qid][str(row)] for row, qid in enumerate(inp["qid"])]
