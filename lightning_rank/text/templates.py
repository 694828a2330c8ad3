"""Render and tokenize (query, document) pairs the way a backbone expects, truncating documents first.

Two styles cover the 2025 paper's defaults:
- ``"pair"``: the tokenizer's own pair format, e.g. ``[CLS] query [SEP] document [SEP]`` (encoders);
- any string with ``{query}`` and ``{document}``, e.g. ``"document: {document}; query: {query}"``, followed by
  EOS (causal LMs and SSMs, which pool the last real token).
Templates that also show the reranker each candidate's first-stage score as text (Askari et al., ECIR 2023):
``"pair+score"`` (``[CLS] query [SEP] score [SEP] document [SEP]``) and strings with a ``{score}`` field; the
data module renders the scores (``lightning_rank.text.score_text``).
Queries are kept whole up to ``max_query_length`` tokens; documents get what is left of ``max_length``: their
start, or with ``excerpt="query_biased"`` the sentences that share most terms with the query
(:mod:`lightning_rank.text.excerpts`).
A document far beyond ``max_length`` is cut to its first ``_CHARS_PER_TOKEN * max_length`` characters before
tokenization (a 200,000-word document took 0.4 s to tokenize whole); the tokens kept are those of the whole
text (see :func:`_encode_documents`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Encoding
from transformers import PreTrainedTokenizerBase

from lightning_rank.errors import ConfigError
from lightning_rank.text.excerpts import check_excerpt, query_biased_excerpts
from lightning_rank.text.passages import Passages, pair_key

PAIR = "pair"
PAIR_WITH_SCORE = "pair+score"
PAIR_STYLES = (PAIR, PAIR_WITH_SCORE)  # the tokenizer's own pair format, no EOS appended
CAUSAL_TEMPLATE = "document: {document}; query: {query}"

_FIELD = re.compile(r"\{(query|document|score)\}")
_SAMPLE_SCORES = ("0", "57", "100", "-25")  # as datamodules.first_stage.score_texts renders them
_CHARS_PER_TOKEN = 32  # real text has 3-6 characters per token: the cut keeps several times what fits


@dataclass
class EncodedPair:
    """Token ids of one rendered pair; ``token_type_ids`` only for the ``pair`` style."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None


@dataclass
class PairTemplate:
    """How one backbone turns a (query, document) pair into token ids."""

    text: str = CAUSAL_TEMPLATE
    append_eos: bool = True
    prepend_bos: bool = False
    _pieces: list[str | int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.is_pair:
            self._pieces = []
            return
        fields = sorted(_FIELD.findall(self.text))
        if fields not in (["document", "query"], ["document", "query", "score"]):
            raise ConfigError(
                f"template {self.text!r} must contain '{{query}}' and '{{document}}' exactly once each, and "
                f"'{{score}}' at most once (or be {PAIR!r} or {PAIR_WITH_SCORE!r} for the tokenizer's own "
                "pair format)"
            )
        self._pieces = [p for p in _FIELD.split(self.text) if p != ""]

    @property
    def is_pair(self) -> bool:
        return self.text in PAIR_STYLES

    @property
    def needs_score(self) -> bool:
        """Whether each pair shows its candidate's first-stage score (rendered text) to the reranker."""
        return self.text == PAIR_WITH_SCORE or "score" in self._pieces

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, source: str) -> None:
        """Refuse a score-showing template whose tokenizer reads scores as unknown tokens: the reranker would
        see the same ``[UNK]`` for every candidate (the built-in word tokenizer has no numbers)."""
        if not self.needs_score or tokenizer.unk_token_id is None:
            return
        ids = tokenizer(list(_SAMPLE_SCORES), add_special_tokens=False)["input_ids"]
        unk = tokenizer.unk_token_id
        unread = [text for text, row in zip(_SAMPLE_SCORES, ids, strict=True) if unk in row]
        if unread:
            raise ConfigError(
                f"template {self.text!r} shows first-stage scores as whole numbers, but tokenizer {source!r} "
                f"reads {', '.join(unread)} as {tokenizer.unk_token!r}: the reranker would see no score. Use "
                "a tokenizer that has digits (any pretrained model's), or a template without scores"
            )

    def encode(
        self,
        tokenizer: PreTrainedTokenizerBase,
        queries: list[str],
        documents: list[str],
        max_length: int,
        max_query_length: int,
        scores: list[str] | None = None,
        excerpt: str = "first",
    ) -> list[EncodedPair]:
        """Encode a list of pairs with the fast (Rust) tokenizer; documents are truncated, never queries
        below ``max_query_length`` nor scores. ``scores`` (one rendered first-stage score per pair) are
        required by templates that show them and refused by the others. ``excerpt``: which part of a
        document too long for the pair is kept (``first`` or ``query_biased``)."""
        check_excerpt(excerpt)
        self._check_pairs(queries, documents, scores)
        backend = _backend(tokenizer)
        query_encodings = _encode_unique(backend, queries)
        for encoding in query_encodings.values():  # once per unique query, not once per pair
            encoding.truncate(max_query_length)
        if self.is_pair:
            firsts = self._first_segments(tokenizer, backend, query_encodings, queries, scores)
            budgets = [max(b, 0) for b in self._pair_budgets(backend, firsts, max_length)]
            documents = _excerpts(backend, excerpt, queries, documents, budgets, max_length)
            doc_encodings = _encode_documents(backend, documents, max_length)  # one per pair
            return [
                self._encode_pair(backend, first, d, budget)
                for first, d, budget in zip(firsts, doc_encodings, budgets, strict=True)
            ]
        literals = self._literal_ids(tokenizer)
        query_ids = {q: e.ids for q, e in query_encodings.items()}
        score_ids = _score_ids(backend, scores, len(queries))
        budgets = [
            max(b, 0)
            for b in self._text_budgets(tokenizer, literals, query_ids, queries, score_ids, max_length)
        ]
        documents = _excerpts(backend, excerpt, queries, documents, budgets, max_length)
        doc_encodings = _encode_documents(backend, documents, max_length)  # one per pair
        return [
            self._encode_text(tokenizer, literals, query_ids[q], d.ids[:budget], ids)
            for q, d, ids, budget in zip(queries, doc_encodings, score_ids, budgets, strict=True)
        ]

    def encode_windows(
        self,
        tokenizer: PreTrainedTokenizerBase,
        queries: list[str],
        documents: list[str],
        max_length: int,
        max_query_length: int,
        passages: Passages,
        scores: list[str] | None = None,
    ) -> list[list[EncodedPair]]:
        """Each pair's document cut into windows (:mod:`lightning_rank.text.passages`), every window
        rendered with the query as :meth:`encode` renders a pair with the document's start."""
        self._check_pairs(queries, documents, scores)
        backend = _backend(tokenizer)
        budgets = [
            max(b, 0) for b in self.document_budgets(tokenizer, queries, max_length, max_query_length, scores)
        ]
        read = None if passages.reads_whole_documents else passages.max_windows or 1
        if read is None:  # every window: the whole document
            doc_encodings = backend.encode_batch(documents, add_special_tokens=False)
        else:
            doc_encodings = _encode_documents(backend, documents, max_length * read)
        query_encodings = _encode_unique(backend, queries)
        for encoding in query_encodings.values():
            encoding.truncate(max_query_length)
        out = []
        if self.is_pair:
            firsts = self._first_segments(tokenizer, backend, query_encodings, queries, scores)
            for q, first, d, budget in zip(queries, firsts, doc_encodings, budgets, strict=True):
                window, starts = passages.starts(len(d.ids), budget, pair_key(query_encodings[q].ids, d.ids))
                out.append([self._encode_pair(backend, first, _window(d, s, window), window) for s in starts])
            return out
        literals = self._literal_ids(tokenizer)
        for q, d, ids, budget in zip(
            queries, doc_encodings, _score_ids(backend, scores, len(queries)), budgets, strict=True
        ):
            query_ids = query_encodings[q].ids
            window, starts = passages.starts(len(d.ids), budget, pair_key(query_ids, d.ids))
            out.append(
                [
                    self._encode_text(tokenizer, literals, query_ids, d.ids[s : s + window], ids)
                    for s in starts
                ]
            )
        return out

    def _check_pairs(self, queries: list[str], documents: list[str], scores: list[str] | None) -> None:
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents")
        if self.needs_score != (scores is not None):
            raise ValueError(
                f"template {self.text!r} shows each candidate's first-stage score: pass one per pair "
                "(the data module renders them from the run being reranked)"
                if self.needs_score
                else f"template {self.text!r} has no {{score}} field: use 'pair+score' or add '{{score}}' "
                "to show first-stage scores"
            )
        if scores is not None and len(scores) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(scores)} scores")

    def document_budgets(
        self,
        tokenizer: PreTrainedTokenizerBase,
        queries: list[str],
        max_length: int,
        max_query_length: int,
        scores: list[str] | None = None,
    ) -> list[int]:
        """The tokens of ``max_length`` left for each pair's document once the template, the query (up to
        ``max_query_length``) and the score take theirs, as :meth:`encode` computes them; 0 or below: the
        document is left out entirely."""
        backend = _backend(tokenizer)
        query_encodings = _encode_unique(backend, queries)
        for encoding in query_encodings.values():
            encoding.truncate(max_query_length)
        if self.is_pair:
            firsts = self._first_segments(tokenizer, backend, query_encodings, queries, scores)
            return self._pair_budgets(backend, firsts, max_length)
        query_ids = {q: e.ids for q, e in query_encodings.items()}
        score_ids = _score_ids(backend, scores, len(queries))
        literals = self._literal_ids(tokenizer)
        return self._text_budgets(tokenizer, literals, query_ids, queries, score_ids, max_length)

    def _first_segments(
        self,
        tokenizer: PreTrainedTokenizerBase,
        backend: Any,
        query_encodings: dict[str, Encoding],
        queries: list[str],
        scores: list[str] | None,
    ) -> list[Encoding]:
        """Segment A of each pair of the ``pair`` styles: the query, or ``query [SEP] score``."""
        if backend.post_processor is None:
            raise ConfigError("the 'pair' template needs a tokenizer with a post-processor for pairs")
        if scores is None:
            return [query_encodings[q] for q in queries]
        shown = [f"{tokenizer.sep_token or ''} {s}" for s in scores]
        shown_encodings = _encode_unique(backend, shown)
        return [
            Encoding.merge([query_encodings[q], shown_encodings[s]], True)
            for q, s in zip(queries, shown, strict=True)
        ]

    @staticmethod
    def _pair_budgets(backend: Any, firsts: list[Encoding], max_length: int) -> list[int]:
        specials = backend.num_special_tokens_to_add(True)
        return [max_length - len(first.ids) - specials for first in firsts]

    def _text_budgets(
        self,
        tokenizer: PreTrainedTokenizerBase,
        literals: list[list[int] | str],
        query_ids: dict[str, list[int]],
        queries: list[str],
        score_ids: list[list[int]],
        max_length: int,
    ) -> list[int]:
        fixed = self._fixed_length(tokenizer, literals)
        return [
            max_length - fixed - len(query_ids[q]) - len(ids)
            for q, ids in zip(queries, score_ids, strict=True)
        ]

    def _encode_pair(self, backend: Any, query: Encoding, document: Encoding, budget: int) -> EncodedPair:
        document.truncate(budget)  # this pair's own encoding; the query's is shared and left as is
        merged = backend.post_processor.process(query, document, True)
        return EncodedPair(list(merged.ids), list(merged.type_ids))

    def _literal_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[list[int] | str]:
        return [
            p if p in ("query", "document", "score") else tokenizer.encode(p, add_special_tokens=False)
            for p in self._pieces
        ]

    def _affixes(self, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        prefix = [tokenizer.bos_token_id] if self.prepend_bos and tokenizer.bos_token_id is not None else []
        suffix = [tokenizer.eos_token_id] if self.append_eos and tokenizer.eos_token_id is not None else []
        return prefix, suffix

    def _fixed_length(self, tokenizer: PreTrainedTokenizerBase, literals: list[list[int] | str]) -> int:
        """Tokens of a rendered text template besides query, score and document: BOS, EOS, literals."""
        prefix, suffix = self._affixes(tokenizer)
        return len(prefix) + len(suffix) + sum(len(p) for p in literals if not isinstance(p, str))

    def _encode_text(
        self,
        tokenizer: PreTrainedTokenizerBase,
        literals: list[list[int] | str],
        query_ids: list[int],
        doc_ids: list[int],
        score_ids: list[int],
    ) -> EncodedPair:
        prefix, suffix = self._affixes(tokenizer)
        ids = list(prefix)
        for piece in literals:
            if piece == "query":
                ids.extend(query_ids)
            elif piece == "document":
                ids.extend(doc_ids)
            elif piece == "score":
                ids.extend(score_ids)
            else:
                ids.extend(piece)
        ids.extend(suffix)
        return EncodedPair(ids)


def _excerpts(
    backend: Any,
    excerpt: str,
    queries: list[str],
    documents: list[str],
    budgets: list[int],
    max_length: int,
) -> list[str]:
    """The documents as given (``first``: truncation keeps their start) or their query-biased excerpts,
    chosen from a very long document's first ``_CHARS_PER_TOKEN * max_length`` characters (as it is cut
    before tokenization)."""
    if excerpt == "first":
        return documents
    limit = _CHARS_PER_TOKEN * max_length
    return query_biased_excerpts(
        queries,
        [d[:limit] for d in documents],
        budgets,
        lambda texts: [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)],
    )


def _window(document: Encoding, start: int, length: int) -> Encoding:
    """A copy of ``document`` holding its tokens ``start`` to ``start + length``."""
    end = min(start + length, len(document.ids))
    window = Encoding.merge([document], True)
    window.truncate(end)
    if start:
        window.truncate(end - start, direction="left")
    return window


def _score_ids(backend: Any, scores: list[str] | None, n: int) -> list[list[int]]:
    """Each pair's score tokens for text templates (none when the template shows no score)."""
    if scores is None:
        return [[]] * n
    encodings = _encode_unique(backend, scores)
    return [encodings[s].ids for s in scores]


def _encode_unique(backend: Any, texts: list[str]) -> dict[str, Encoding]:
    """Encode each distinct text once (a query shared by a group, a score), without special tokens added."""
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, backend.encode_batch(unique, add_special_tokens=False), strict=True))


def _encode_documents(backend: Any, documents: list[str], max_length: int) -> list[Encoding]:
    """Encode documents, cutting very long ones first. A cut document whose ``max_length``-th token does not
    end in the first half of the cut (text with very few tokens per character) is encoded whole instead: a
    cut changes only the tokens next to it, so the first ``max_length`` tokens are those of the whole text."""
    limit = _CHARS_PER_TOKEN * max_length
    encodings = backend.encode_batch([d[:limit] for d in documents], add_special_tokens=False)
    redo = [
        i
        for i, (d, e) in enumerate(zip(documents, encodings, strict=True))
        if len(d) > limit and not (len(e.ids) >= max_length and e.offsets[max_length - 1][1] <= limit // 2)
    ]
    if redo:
        whole = backend.encode_batch([documents[i] for i in redo], add_special_tokens=False)
        for i, encoding in zip(redo, whole, strict=True):
            encodings[i] = encoding
    return encodings


def _backend(tokenizer: PreTrainedTokenizerBase) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"{type(tokenizer).__name__} has no fast (Rust) backend; lightning-rank tokenizes in DataLoader "
            "workers with fast tokenizers only. Load the tokenizer with use_fast=True."
        )
    return backend
