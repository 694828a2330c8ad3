"""A GRU reranker backbone, shipped as its own package to show how third parties plug into lightning-rank."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_rank.backbones.base import Backbone


class GRULayer(nn.Module):
    """One GRU layer with a residual connection: the unit FSDP would wrap."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.gru(self.norm(x))
        return x + out


class GRUBackbone(Backbone):
    """Embedding + stacked GRU layers; causal, so right padding cannot change a pair's score."""

    pooling = "last"

    def __init__(
        self,
        tokenizer: str = "builtin:words",
        template: str | None = None,
        hidden_size: int = 64,
        num_layers: int = 1,
    ) -> None:
        """
        Args:
            tokenizer: hub id, local folder or ``builtin:words``.
            template: pair template; default ``document: {document}; query: {query}`` + EOS.
            hidden_size: embedding and GRU width.
            num_layers: stacked GRU layers.
        """
        super().__init__()
        self._init_text(tokenizer, None, template)
        self._hidden = hidden_size
        self.embed = nn.Embedding(len(self.tokenizer), hidden_size, padding_idx=self.tokenizer.pad_token_id)
        self.layers = nn.ModuleList(GRULayer(hidden_size) for _ in range(num_layers))

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (GRULayer,)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        x = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        for layer in self.layers:
            x = layer(x)
        return x
