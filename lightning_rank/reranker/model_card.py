"""The README.md model card every export carries: YAML metadata the Hugging Face hub reads (pipeline tag,
base model, training data, metrics) and a short text on how the folder loads and renders pairs.

Built with huggingface_hub's :class:`~huggingface_hub.ModelCard`; facts the checkpoint does not record
(training data, metrics) are left out rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from lightning_rank.text.input_format import InputFormat

CARD = "README.md"
_LIBRARY = {
    "native": "lightning-rank",
    "sentence-transformers": "sentence-transformers",
    "hf": "transformers",
}
_LOADING = {
    "native": (
        "```python\nfrom lightning_rank.reranker.module import RerankerModule\n\n"
        "reranker = RerankerModule.from_pretrained({where!r})\n"
        'scores = reranker.score(["a query"], ["a document"])\n```\n\n'
        "or `lightning-rank rerank --model {where} --dataset ... --run ... --output ...`."
    ),
    "sentence-transformers": (
        "```python\nfrom sentence_transformers import CrossEncoder\n\n"
        "model = CrossEncoder({where!r})\n"
        'scores = model.predict([("a query", "a document")])\n```'
    ),
    "hf": (
        "```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        "model = AutoModelForSequenceClassification.from_pretrained({where!r})\n"
        "tokenizer = AutoTokenizer.from_pretrained({where!r})\n```\n\n"
        "The logits (one per pair) are the scores."
    ),
}


@dataclass
class CardFacts:
    """What a checkpoint records about its training, for the card; empty where nothing is recorded."""

    datasets: list[str] = field(default_factory=list)  # training (and validation) dataset ids
    val_dataset: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # validation metrics, e.g. {"nDCG@10": 0.42}


def hub_id(name: Any) -> str | None:
    """``name`` when it is a Hugging Face hub id rather than a local path, else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def model_card(
    backbone_name: str,
    backbone_args: dict[str, Any],
    template: str,
    trained: InputFormat | None,
    export_format: str,
    facts: CardFacts,
    rendering: str,
    where: str,
) -> ModelCard:
    """The card of one export: ``rendering`` says how the folder's pairs must be rendered, ``where`` is how
    the usage example names the folder."""
    base = hub_id(backbone_args.get("pretrained"))
    shape = trained.as_dict() if trained is not None else None
    eval_results = (
        [
            EvalResult(
                task_type="text-ranking",
                dataset_type=facts.val_dataset,
                dataset_name=facts.val_dataset,
                metric_type=name,
                metric_value=value,
            )
            for name, value in facts.metrics.items()
        ]
        if facts.val_dataset and facts.metrics
        else None
    )
    data = ModelCardData(
        pipeline_tag="text-ranking",
        library_name=_LIBRARY[export_format],
        base_model=base,
        datasets=facts.datasets or None,
        tags=["lightning-rank", "reranker", "cross-encoder", backbone_name],
        model_name=Path(where).name if eval_results else None,
        eval_results=eval_results,
        lightning_rank={"format": export_format, "template": template, "input_format": shape},
    )
    recorded = (
        f"max_length {trained.max_length}, max_query_length {trained.max_query_length}, excerpt "
        f"{trained.excerpt!r}" + (f", passages {trained.passages}" if trained.passages is not None else "")
        if trained is not None
        else "not recorded (the model was not trained by lightning-rank fit): 256 / 64 / 'first' assumed"
    )
    metrics = "".join(f"- {facts.val_dataset} {name}: {value:.4f}\n" for name, value in facts.metrics.items())
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# {Path(where).name}\n\n"
        f"A cross-encoder reranker ({backbone_name} backbone"
        + (f", from `{base}`" if base else "")
        + f") trained with lightning-rank, exported as "
        f"`{export_format}`.\n\n## Loading\n\n{_LOADING[export_format].format(where=where)}\n\n"
        f"## Input\n\nTemplate `{template}`; training's input format: {recorded}. {rendering}.\n"
        + (f"\n## Validation\n\n{metrics}" if metrics else "")
        + ("\n## Training data\n\n" + "".join(f"- `{d}`\n" for d in facts.datasets) if facts.datasets else "")
    )
    return ModelCard(text)
