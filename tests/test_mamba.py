"""Mamba-1 / Mamba-2 backbones: scans against naive recurrences, layout against transformers, padding
invariance, checkpoint round trips, offline behaviour, kernel selection and (on CUDA) kernel parity.

Everything runs offline on tiny random models with the built-in word tokenizer.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import itertools
import math
import time
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lightning_rank.backbones.mamba import Mamba1Backbone, Mamba2Backbone
from lightning_rank.backbones.mamba import kernels as kernels_mod
from lightning_rank.backbones.mamba.backbone import _MambaBackbone
from lightning_rank.backbones.mamba.loading import DEFAULT_TOKENIZER, tokenizer_source
from lightning_rank.backbones.mamba.scan import (
    selective_scan,
    selective_scan_reference,
    ssd_chunked,
    ssd_reference,
)

TINY = {
    Mamba1Backbone: {"d_model": 32, "n_layer": 2, "d_state": 8},
    Mamba2Backbone: {
        "d_model": 32,
        "n_layer": 2,
        "d_state": 16,
        "headdim": 16,
        "ngroups": 2,
        "chunk_size": 8,
    },
}
BACKBONES = [Mamba1Backbone, Mamba2Backbone]
HAS_KERNELS = torch.cuda.is_available() and kernels_mod.kernels_available()


# Sizes the fused kernels certainly support (channel counts multiple of 8, Triton-friendly SSD chunks).
KERNEL_SIZES = {
    Mamba1Backbone: {"d_model": 64, "n_layer": 2},
    Mamba2Backbone: {"d_model": 64, "n_layer": 2, "d_state": 32, "headdim": 32, "chunk_size": 64},
}


# Execution variants that must compute the same function: (backbone class, config overrides).
CASES = [
    pytest.param(Mamba1Backbone, {}, id="mamba1"),
    pytest.param(Mamba2Backbone, {}, id="mamba2"),
    pytest.param(Mamba2Backbone, {"norm_impl": "torch"}, id="mamba2-torchnorm"),
]


def tiny(
    cls: type[_MambaBackbone],
    seed: int = 0,
    sizes: dict[type, dict] | None = None,
    overrides: dict | None = None,
    **kwargs: object,
) -> _MambaBackbone:
    """A random tiny backbone whose SSM parameters are perturbed away from their (symmetric) init."""
    torch.manual_seed(seed)
    config = {**(sizes or TINY)[cls], **(overrides or {})}
    model = cls(config=config, tokenizer="builtin:words", **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.A_log.add_(0.3 * torch.randn_like(layer.mixer.A_log))
            layer.mixer.D.add_(0.1 * torch.randn_like(layer.mixer.D))
            layer.norm.weight.add_(0.1 * torch.randn_like(layer.norm.weight))
    return model.eval()


def batch(model: _MambaBackbone, pairs: list[tuple[str, str]], max_length: int = 64) -> tuple[Tensor, Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` of rendered (query, document) pairs."""
    queries, docs = zip(*pairs, strict=True)
    encoded = model.template.encode(model.tokenizer, list(queries), list(docs), max_length, 16)
    length = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), length), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(encoded), length, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
    return ids, mask


def scores(model: _MambaBackbone, ids: Tensor, mask: Tensor) -> Tensor:
    """A fixed linear head on the pooled state, as the reranker computes scores."""
    pooled = model.pool(model(ids, mask), mask)
    head = torch.linspace(-1.0, 1.0, pooled.shape[-1], dtype=pooled.dtype, device=pooled.device)
    return pooled @ head


PAIRS = [
    ("baba kede", "kede fifo baba"),
    ("baba kede", "lulu mama " * 12 + "kede"),
    ("zuzu", "sasa " * 20 + "baba kede fifo"),
]


def _mamba1_inputs(dtype: torch.dtype, length: int = 37) -> list[Tensor]:
    torch.manual_seed(0)
    b, d, n = 2, 5, 3
    return [
        torch.randn(b, length, d, dtype=dtype, requires_grad=True),
        (torch.rand(b, length, d, dtype=dtype) * 2).requires_grad_(),
        (-torch.rand(d, n, dtype=dtype) * 4 - 0.1).requires_grad_(),
        torch.randn(b, length, n, dtype=dtype, requires_grad=True),
        torch.randn(b, length, n, dtype=dtype, requires_grad=True),
    ]


def _ssd_inputs(dtype: torch.dtype, length: int = 37) -> list[Tensor]:
    torch.manual_seed(0)
    b, h, p, g, n = 2, 4, 3, 2, 5
    return [
        torch.randn(b, length, h, p, dtype=dtype, requires_grad=True),
        (torch.rand(b, length, h, dtype=dtype) * 2).requires_grad_(),
        (-torch.rand(h, dtype=dtype) * 4 - 0.1).requires_grad_(),
        torch.randn(b, length, g, n, dtype=dtype, requires_grad=True),
        torch.randn(b, length, g, n, dtype=dtype, requires_grad=True),
    ]


def _check_against(fast: Tensor, ref: Tensor, inputs: list[Tensor], rtol: float, atol: float) -> None:
    torch.testing.assert_close(fast, ref.to(fast.dtype), rtol=rtol, atol=atol)
    weight = torch.randn_like(ref)
    fast_grads = torch.autograd.grad((fast * weight).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * weight).sum(), inputs)
    for got, want in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


# --- scans against naive sequential recurrences ----------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_selective_scan_matches_sequential_reference_fp64(chunk: int) -> None:
    inputs = _mamba1_inputs(torch.float64)
    _check_against(
        selective_scan(*inputs, chunk=chunk), selective_scan_reference(*inputs), inputs, 1e-10, 1e-10
    )


def test_selective_scan_matches_reference_fp32() -> None:
    inputs = _mamba1_inputs(torch.float32)
    _check_against(selective_scan(*inputs), selective_scan_reference(*inputs), inputs, 1e-4, 1e-4)


@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_ssd_matches_sequential_reference_fp64(chunk: int) -> None:
    inputs = _ssd_inputs(torch.float64)
    _check_against(ssd_chunked(*inputs, chunk=chunk), ssd_reference(*inputs), inputs, 1e-10, 1e-10)


def test_ssd_matches_reference_fp32() -> None:
    inputs = _ssd_inputs(torch.float32)
    _check_against(ssd_chunked(*inputs, chunk=16), ssd_reference(*inputs), inputs, 1e-4, 1e-4)


def test_scans_stay_finite_with_very_fast_decay() -> None:
    """delta * A of -500 per step would overflow any exp(-cumsum) factorisation; these scans only exp <= 0."""
    inputs = _mamba1_inputs(torch.float64)
    inputs[1] = (inputs[1].detach() * 100).requires_grad_()
    _check_against(selective_scan(*inputs), selective_scan_reference(*inputs), inputs, 1e-10, 1e-10)
    inputs = _ssd_inputs(torch.float64)
    inputs[1] = (inputs[1].detach() * 100).requires_grad_()
    _check_against(ssd_chunked(*inputs, chunk=16), ssd_reference(*inputs), inputs, 1e-10, 1e-10)


def _packed_starts(length: int = 37) -> Tensor:
    """Sequence starts of two packed rows: row 0 at 0, 5, 17, 18 (a one-token sequence) and 30; row 1 at 0,
    16 and 32."""
    starts = torch.zeros(2, length, dtype=torch.bool)
    starts[:, 0] = True
    starts[0, [5, 17, 18, 30]] = True
    starts[1, [16, 32]] = True
    return starts


@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_scans_restart_at_packed_sequence_starts(chunk: int) -> None:
    """Against the references that zero the state at each start, and against each sequence scanned alone."""
    starts = _packed_starts()
    inputs = _mamba1_inputs(torch.float64)
    packed = selective_scan(*inputs, chunk=chunk, resets=starts)
    _check_against(packed, selective_scan_reference(*inputs, resets=starts), inputs, 1e-10, 1e-10)
    bounds = [0, 5, 17, 18, 30, 37]
    u, delta, A, B, C = inputs
    alone = [
        selective_scan(u[:1, s:e], delta[:1, s:e], A, B[:1, s:e], C[:1, s:e])
        for s, e in itertools.pairwise(bounds)
    ]
    torch.testing.assert_close(packed[:1], torch.cat(alone, dim=1), rtol=1e-10, atol=1e-10)

    segments = torch.cumsum(starts.long(), dim=1)
    inputs = _ssd_inputs(torch.float64)
    packed = ssd_chunked(*inputs, chunk=chunk, segments=segments)
    _check_against(packed, ssd_reference(*inputs, segments=segments), inputs, 1e-10, 1e-10)
    x, dt, A, B, C = inputs
    alone = [
        ssd_chunked(x[:1, s:e], dt[:1, s:e], A, B[:1, s:e], C[:1, s:e], chunk=chunk)
        for s, e in itertools.pairwise(bounds)
    ]
    torch.testing.assert_close(packed[:1], torch.cat(alone, dim=1), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(packed, ssd_chunked(*inputs, chunk=chunk))  # the restarts change the output


def test_selective_scan_gradcheck() -> None:
    inputs = [
        t.detach()[:, :9, :3].clone().requires_grad_() if t.dim() == 3 else t
        for t in _mamba1_inputs(torch.float64)
    ]
    inputs[2] = inputs[2].detach()[:3].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk=4), inputs)


# --- layout: the same weights in transformers' models give the same hidden states -------------------------


@pytest.mark.parametrize("cls", BACKBONES)
def test_matches_transformers_model_loaded_from_our_export(cls: type[_MambaBackbone], tmp_path: Path) -> None:
    """Export in the transformers layout, load with transformers' own MambaModel/Mamba2Model (torch path)."""
    from transformers import Mamba2Model, MambaModel

    model = tiny(cls)
    model.save_pretrained(tmp_path, layout="transformers")
    hf_cls = MambaModel if cls is Mamba1Backbone else Mamba2Model
    hf = hf_cls.from_pretrained(tmp_path).eval()
    ids, mask = batch(model, PAIRS)
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-4, atol=1e-4)


# --- padding, gradients, checkpointing -----------------------------------------------------------------


@pytest.mark.parametrize("cls", BACKBONES)
def test_padding_invariance(cls: type[_MambaBackbone]) -> None:
    """A pair's score alone equals its score inside a batch with longer pairs (right padding)."""
    model = tiny(cls)
    with torch.no_grad():
        together = scores(model, *batch(model, PAIRS))
        for i, pair in enumerate(PAIRS):
            alone = scores(model, *batch(model, [pair]))
            torch.testing.assert_close(alone[0], together[i], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", BACKBONES)
def test_padding_tokens_do_not_matter(cls: type[_MambaBackbone]) -> None:
    """Whatever sits in the padded positions, the real positions' states are unchanged."""
    model = tiny(cls)
    ids, mask = batch(model, PAIRS)
    noisy = torch.where(mask.bool(), ids, torch.randint_like(ids, 10, 200))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask)[mask.bool()], model(noisy, mask)[mask.bool()])


@pytest.mark.parametrize("cls", BACKBONES)
def test_gradients_reach_every_parameter(cls: type[_MambaBackbone]) -> None:
    model = tiny(cls).train()
    ids, mask = batch(model, PAIRS)
    scores(model, ids, mask).pow(2).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        if name != "backbone.embedding.weight":  # most rows are unused tokens
            assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", BACKBONES)
def test_gradient_checkpointing_gives_the_same_gradients(cls: type[_MambaBackbone]) -> None:
    grads = []
    for checkpointing in (False, True):
        model = tiny(cls, gradient_checkpointing=checkpointing).train()
        assert model.backbone.gradient_checkpointing is checkpointing
        ids, mask = batch(model, PAIRS)
        scores(model, ids, mask).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("cls", BACKBONES)
def test_bf16_autocast_on_cpu_is_close_to_fp32(cls: type[_MambaBackbone]) -> None:
    model = tiny(cls)
    ids, mask = batch(model, PAIRS)
    with torch.no_grad():
        full = scores(model, ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = scores(model, ids, mask)
    torch.testing.assert_close(half.float(), full, rtol=0.05, atol=0.05)


# --- the Backbone interface --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BACKBONES)
def test_interface(cls: type[_MambaBackbone]) -> None:
    model = tiny(cls)
    assert model.pooling == "last"
    assert model.hidden_size == 32
    assert model.block_classes() == (type(model.backbone.layers[0]),)
    assert model.config.vocab_size >= len(model.tokenizer)
    assert model.config.vocab_size % model.config.pad_vocab_size_multiple == 0
    matmuls = sum(m.weight.numel() for m in model.backbone.layers.modules() if isinstance(m, torch.nn.Linear))
    assert 2 * matmuls < model.flops_per_token(128) < 4 * matmuls + 1e6
    ids, mask = batch(model, PAIRS)
    assert model(ids, mask).shape == (*ids.shape, 32)


def test_unknown_config_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="d_modle"):
        Mamba1Backbone(config={"d_modle": 32}, tokenizer="builtin:words")


def test_entry_points_name_the_two_classes() -> None:
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group="lightning_rank.backbones")}
    if "mamba1" not in found:
        pytest.skip("package metadata predates the mamba entry points (reinstall with pip install -e .)")
    assert found["mamba1"].load() is Mamba1Backbone
    assert found["mamba2"].load() is Mamba2Backbone


# --- checkpoints: both layouts, hub ids offline --------------------------------------------------------


@pytest.mark.parametrize("cls", BACKBONES)
def test_layout_round_trip_gives_identical_scores(cls: type[_MambaBackbone], tmp_path: Path) -> None:
    """The same random weights saved in the transformers and in the mamba_ssm layout load to equal scores."""
    model = tiny(cls)
    ids, mask = batch(model, PAIRS)
    with torch.no_grad():
        want = scores(model, ids, mask)
    loaded = {}
    for layout in ("transformers", "mamba_ssm"):
        folder = tmp_path / layout
        model.save_pretrained(folder, layout=layout)
        loaded[layout] = cls(pretrained=str(folder)).eval()
        assert len(loaded[layout].tokenizer) == len(model.tokenizer)
    assert (tmp_path / "transformers" / "model.safetensors").exists()
    assert (tmp_path / "mamba_ssm" / "pytorch_model.bin").exists()
    with torch.no_grad():
        for layout, other in loaded.items():
            assert torch.equal(scores(other, ids, mask), want), layout


def test_loads_a_folder_shaped_like_state_spaces_mamba2_130m(tmp_path: Path) -> None:
    """mamba_ssm layout as released: unpadded vocab_size, bare ssm_cfg, no tokenizer, tied lm_head."""
    import json

    model = tiny(Mamba2Backbone)
    cfg = model.config
    raw = {
        "d_model": cfg.d_model,
        "d_intermediate": 0,
        "n_layer": cfg.n_layer,
        "vocab_size": len(model.tokenizer),
        "ssm_cfg": {
            "layer": "Mamba2",
            "d_state": cfg.d_state,
            "headdim": cfg.headdim,
            "ngroups": cfg.ngroups,
            "chunk_size": cfg.chunk_size,
        },
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple,
        "tie_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    state = dict(model.state_dict())
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert tokenizer_source(tmp_path) == DEFAULT_TOKENIZER
    loaded = Mamba2Backbone(pretrained=str(tmp_path), tokenizer="builtin:words").eval()
    assert loaded.config.vocab_size == cfg.vocab_size  # padded to the multiple, as mamba_ssm does
    ids, mask = batch(model, PAIRS)
    with torch.no_grad():
        assert torch.equal(scores(loaded, ids, mask), scores(model, ids, mask))


def test_loads_a_folder_shaped_like_state_spaces_mamba_130m_hf(tmp_path: Path) -> None:
    """transformers layout as released (config of transformers 4.39, safetensors without lm_head)."""
    import json

    from safetensors.torch import save_file

    model = tiny(Mamba1Backbone)
    cfg = model.config
    raw = {
        "architectures": ["MambaForCausalLM"],
        "bos_token_id": 0,
        "conv_kernel": 4,
        "eos_token_id": 0,
        "expand": 2,
        "fused_add_norm": True,
        "hidden_act": "silu",
        "hidden_size": cfg.d_model,
        "initializer_range": 0.1,
        "intermediate_size": cfg.d_inner,
        "layer_norm_epsilon": 1e-05,
        "model_type": "mamba",
        "n_layer": cfg.n_layer,
        "num_hidden_layers": cfg.n_layer,
        "pad_token_id": 0,
        "pad_vocab_size_multiple": 8,
        "rescale_prenorm_residual": False,
        "residual_in_fp32": True,
        "rms_norm": True,
        "state_size": cfg.d_state,
        "time_step_floor": 0.0001,
        "time_step_init_scheme": "random",
        "time_step_max": 0.1,
        "time_step_min": 0.001,
        "time_step_rank": cfg.dt_rank,
        "time_step_scale": 1.0,
        "torch_dtype": "float32",
        "transformers_version": "4.39.0.dev0",
        "use_bias": False,
        "use_cache": True,
        "use_conv_bias": True,
        "vocab_size": cfg.vocab_size,
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    state = {k.replace("embedding.", "embeddings."): v for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    loaded = Mamba1Backbone(pretrained=str(tmp_path), tokenizer="builtin:words").eval()
    ids, mask = batch(model, PAIRS)
    with torch.no_grad():
        assert torch.equal(scores(loaded, ids, mask), scores(model, ids, mask))


def test_mamba_ssm_config_has_the_expected_keys(tmp_path: Path) -> None:
    import json

    tiny(Mamba2Backbone).save_pretrained(tmp_path, layout="mamba_ssm")
    raw = json.loads((tmp_path / "config.json").read_text())
    for key in (
        "d_model",
        "n_layer",
        "vocab_size",
        "ssm_cfg",
        "rms_norm",
        "residual_in_fp32",
        "fused_add_norm",
    ):
        assert key in raw
    assert raw["ssm_cfg"]["layer"] == "Mamba2"
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert "backbone.embedding.weight" in state and "lm_head.weight" in state
    assert "backbone.layers.1.mixer.norm.weight" in state and "backbone.norm_f.weight" in state


def test_loading_the_other_generation_is_a_clear_error(tmp_path: Path) -> None:
    tiny(Mamba2Backbone).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="mamba2 checkpoint"):
        Mamba1Backbone(pretrained=str(tmp_path))


def test_folder_without_tokenizer_defaults_to_gpt_neox(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert tokenizer_source(tmp_path) == DEFAULT_TOKENIZER == "EleutherAI/gpt-neox-20b"
    (tmp_path / "tokenizer.json").write_text("{}")
    assert tokenizer_source(tmp_path) == str(tmp_path)


@pytest.mark.parametrize("cls", BACKBONES)
def test_uncached_hub_id_fails_fast_offline(cls: type[_MambaBackbone]) -> None:
    start = time.monotonic()
    with pytest.raises(OSError, match=r"lightning-rank-tests/no-such-mamba.*downloaded first"):
        cls(pretrained="lightning-rank-tests/no-such-mamba")
    assert time.monotonic() - start < 5


# --- kernel selection ----------------------------------------------------------------------------------


@pytest.mark.skipif(kernels_mod.kernels_available(), reason="mamba_ssm is installed")
def test_always_without_kernels_says_what_to_install() -> None:
    with pytest.raises(ImportError, match=r"pip install lightning-rank\[mamba\]"):
        Mamba1Backbone(config=dict(TINY[Mamba1Backbone]), tokenizer="builtin:words", use_kernels="always")


def test_always_on_cpu_tensors_says_cuda_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels_mod, "kernels_available", lambda: True)
    model = tiny(Mamba2Backbone, use_kernels="always")
    ids, mask = batch(model, PAIRS)
    with pytest.raises(RuntimeError, match="CUDA"):
        model(ids, mask)


def test_auto_and_never_take_the_torch_path_on_cpu() -> None:
    x = torch.zeros(1)
    assert not kernels_mod.should_use_kernels("auto", x)
    assert not kernels_mod.should_use_kernels("never", x)
    with pytest.raises(ValueError, match="use_kernels"):
        kernels_mod.check_mode("sometimes")


def _fake_mamba_inner_fn(
    xz: Tensor,
    conv1d_weight: Tensor,
    conv1d_bias: Tensor | None,
    x_proj_weight: Tensor,
    delta_proj_weight: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    A: Tensor,
    B: Tensor | None = None,
    C: Tensor | None = None,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """mamba_ssm's ``mamba_inner_ref`` semantics (``xz: [b, 2d, l]``, conv weight ``[d, 1, w]``)."""
    assert B is None and C is None and delta_softplus and conv1d_weight.dim() == 3
    length, rank, n = xz.shape[-1], delta_proj_weight.shape[1], A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    width = conv1d_weight.shape[-1]
    x = torch.nn.functional.conv1d(x, conv1d_weight, conv1d_bias, padding=width - 1, groups=x.shape[1])
    x = torch.nn.functional.silu(x[..., :length]).transpose(1, 2)  # [b, l, d]
    x_dbl = x @ x_proj_weight.t()
    delta = x_dbl[..., :rank] @ delta_proj_weight.t() + delta_bias
    y = selective_scan_reference(
        x, torch.nn.functional.softplus(delta), A, x_dbl[..., rank : rank + n], x_dbl[..., -n:]
    )
    y = (y + x * D) * torch.nn.functional.silu(z.transpose(1, 2))
    return torch.nn.functional.linear(y, out_proj_weight, out_proj_bias)


def _fake_mamba_split_conv1d_scan_combined(
    zxbcdt: Tensor,
    conv1d_weight: Tensor,
    conv1d_bias: Tensor | None,
    dt_bias: Tensor,
    A: Tensor,
    D: Tensor,
    chunk_size: int,
    activation: str = "silu",
    rmsnorm_weight: Tensor | None = None,
    rmsnorm_eps: float = 1e-6,
    outproj_weight: Tensor | None = None,
    outproj_bias: Tensor | None = None,
    headdim: int | None = None,
    ngroups: int = 1,
    norm_before_gate: bool = True,
) -> Tensor:
    """mamba_ssm's ``mamba_split_conv1d_scan_ref`` semantics (conv weight ``[d, w]``, grouped RMSNorm).

    Without ``rmsnorm_weight`` the gate is applied by the scan and there is no norm, as in mamba_ssm.
    """
    functional = torch.nn.functional
    assert activation == "silu" and conv1d_weight.dim() == 2
    nheads, headdim = (D.shape[0], headdim) if D.dim() == 1 else D.shape
    dim, length, width = nheads * headdim, zxbcdt.shape[1], conv1d_weight.shape[-1]
    n = (zxbcdt.shape[-1] - 2 * dim - nheads) // ngroups // 2
    z, xBC, dt = zxbcdt.split([dim, dim + 2 * ngroups * n, nheads], dim=-1)
    xBC = functional.conv1d(
        xBC.transpose(1, 2), conv1d_weight.unsqueeze(1), conv1d_bias, padding=width - 1, groups=xBC.shape[-1]
    )
    xBC = functional.silu(xBC[..., :length]).transpose(1, 2)
    x, B, C = xBC.split([dim, ngroups * n, ngroups * n], dim=-1)
    x = x.unflatten(-1, (nheads, headdim))
    dt = functional.softplus(dt + dt_bias)
    y = ssd_reference(x, dt, A, B.unflatten(-1, (ngroups, n)), C.unflatten(-1, (ngroups, n)))
    y = (y + x * (D[:, None] if D.dim() == 1 else D)).flatten(-2)
    if rmsnorm_weight is None:
        y = y * functional.silu(z)
        return y if outproj_weight is None else functional.linear(y, outproj_weight, outproj_bias)
    if not norm_before_gate:
        y = y * functional.silu(z)
    groups = y.unflatten(-1, (ngroups, -1))
    y = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + rmsnorm_eps)).flatten(-2)
    y = y * rmsnorm_weight
    if norm_before_gate:
        y = y * functional.silu(z)
    return functional.linear(y, outproj_weight, outproj_bias)


@pytest.mark.parametrize(("cls", "overrides"), CASES)
def test_kernel_path_plumbing_with_reference_kernels_on_cpu(
    cls: type[_MambaBackbone], overrides: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused path's calls, run against mamba_ssm's reference semantics, equal the PyTorch path.

    This checks argument order, layouts and shapes of the kernel calls where no GPU is available.
    """
    from lightning_rank.backbones.mamba import model as model_mod

    fakes = {"mamba1": _fake_mamba_inner_fn, "mamba2": _fake_mamba_split_conv1d_scan_combined}
    monkeypatch.setattr(kernels_mod, "_load", lambda: (fakes, None))
    monkeypatch.setattr(model_mod, "should_use_kernels", lambda mode, tensor: mode == "always")
    model = tiny(cls, overrides=overrides).train()
    ids, mask = batch(model, PAIRS)
    results = []
    for mode in ("always", "never"):
        model.backbone.use_kernels = mode
        model.zero_grad()
        out = scores(model, ids, mask)
        out.pow(2).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    for name, grad in results[1][1].items():
        torch.testing.assert_close(results[0][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_KERNELS, reason="needs CUDA and mamba_ssm + causal_conv1d")
@pytest.mark.parametrize(("cls", "overrides"), CASES)
def test_kernel_path_matches_torch_path_bf16(cls: type[_MambaBackbone], overrides: dict) -> None:
    """Fused kernels under bf16 autocast are as close to the fp32 PyTorch path as the PyTorch path under bf16
    autocast is (scores and every gradient). Comparing the two bf16 paths with each other instead mistakes
    rounding for a bug: on an H100 they differed by 2.1% on the embedding gradient."""
    model = tiny(cls, sizes=KERNEL_SIZES, overrides=overrides).cuda().train()
    ids, mask = (t.cuda() for t in batch(model, PAIRS))

    def run(mode: str, bf16: bool) -> tuple[Tensor, dict[str, Tensor]]:
        model.backbone.use_kernels = mode
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = scores(model, ids, mask)
        out.float().pow(2).sum().backward()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.float().detach(), grads

    def rel(a: Tensor, b: Tensor) -> float:
        return ((a - b).norm() / b.norm().clamp_min(1e-6)).item()

    reference_out, reference_grads = run("never", bf16=False)
    kernel_out, kernel_grads = run("always", bf16=True)
    torch_out, torch_grads = run("never", bf16=True)
    assert rel(kernel_out, reference_out) <= 2 * rel(torch_out, reference_out) + 2e-3
    assert kernel_grads.keys() == reference_grads.keys()
    for name, reference in reference_grads.items():
        bound = 2 * rel(torch_grads[name], reference) + 2e-3
        assert rel(kernel_grads[name], reference) <= bound, name


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_KERNELS, reason="needs CUDA and mamba_ssm + causal_conv1d")
def test_kernel_path_is_padding_invariant() -> None:
    for cls in BACKBONES:
        model = tiny(cls, sizes=KERNEL_SIZES, use_kernels="always").cuda()
        with torch.no_grad():
            together = scores(model, *(t.cuda() for t in batch(model, PAIRS)))
            alone = scores(model, *(t.cuda() for t in batch(model, PAIRS[:1])))
        assert math.isclose(alone[0].item(), together[0].item(), abs_tol=1e-4)


def test_execution_options_are_validated() -> None:
    with pytest.raises(ValueError, match="norm_impl must be 'fused' or 'torch'"):
        tiny(Mamba2Backbone, overrides={"norm_impl": "triton"})
    with pytest.raises(ValueError, match="block_norm must be 'eager' or 'compiled'"):
        tiny(Mamba1Backbone, overrides={"block_norm": "fast"})


def test_compiled_block_norm_computes_the_same_scores() -> None:
    """``block_norm='compiled'`` (torch.compile of the pre-norm + mask) is only a faster way to the same."""
    eager = tiny(Mamba1Backbone)
    compiled = tiny(Mamba1Backbone, overrides={"block_norm": "compiled"})
    ids, mask = batch(eager, PAIRS)
    with torch.no_grad():
        expected = scores(eager, ids, mask)
        torch.testing.assert_close(scores(compiled, ids, mask), expected, rtol=1e-5, atol=1e-5)
