"""Tokenizers built in-process, for the offline demo and the tests (no hub download).

``builtin:words`` is a whitespace word-level tokenizer over the fixed pseudo-word vocabulary that the demo
collection is generated from (:data:`VOCABULARY`), with BERT-style specials and an EOS token, so the same
tokenizer serves encoder (``[CLS] q [SEP] d [SEP]``) and causal (``... [EOS]``) templates.
"""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lightning_rank.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]")
# Words of the template "document: {document}; query: {query}" so that the causal template tokenizes cleanly.
TEMPLATE_WORDS = ("document", "query", ":", ";")
_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_words() -> tuple[str, ...]:
    syllables = [c + v for c, v in itertools.product(_ONSETS, _VOWELS)]
    return tuple(a + b for a, b in itertools.product(syllables, syllables))


#: 4,900 pronounceable two-syllable pseudo-words ("baba" ... "zuzu"), in a fixed order.
VOCABULARY: tuple[str, ...] = _pseudo_words()


def _words_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *TEMPLATE_WORDS, *VOCABULARY))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[EOS]",
        model_max_length=1_000_000,
    )


_BUILDERS = {"words": _words_tokenizer}


def build_builtin_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """Build a fresh tokenizer named by ``builtin:<name>``; an unknown name lists the available ones."""
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in _BUILDERS:
        known = ", ".join(BUILTIN_PREFIX + n for n in _BUILDERS)
        raise ConfigError(f"unknown built-in tokenizer {spec!r}; available: {known}")
    return _BUILDERS[name]()
