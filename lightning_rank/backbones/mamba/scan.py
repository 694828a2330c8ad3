"""Pure-PyTorch scans for the Mamba mixers: Mamba-1's selective scan and Mamba-2's SSD, plus naive references.

Mamba-1 (:func:`selective_scan`). The state ``h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t`` has one
``d_state``-vector per channel with its own decay, so any parallel form materialises ``[B, L, D, N]``
tensors, and on a CPU every pass over them costs memory bandwidth. The scan is therefore a custom autograd
function that works chunk by chunk (``chunk`` time steps at a time, time-major so that a step is one
contiguous block): whole-tensor ops build a chunk's decays and inputs, one fused ``addcmul`` per step
carries the recurrence, one batched matmul reads the outputs. Only the states at chunk starts are kept for
backward, which recomputes a chunk's states and runs the adjoint recurrence backwards in the same way, so
memory stays ``O(B L D + (L / chunk) B D N)`` like the CUDA kernel's, and nothing is ever scattered into
full-size tensors (the reason transformers' step-indexed torch path needs ~30 s per training step). Every
exponent is of a non-positive number, so the scan is stable for any ``delta`` and ``A``. (The log-space
alternative, ``exp(S_t) * cumsum(exp(-S_s) x_s)`` with ``S`` the cumulative ``delta A``, overflows as soon
as a chunk decays by more than ~exp(-88), which trained checkpoints do; its stable form, a segment-sum
matrix per channel and state, is ``chunk`` times larger than the states themselves.)

Mamba-2 (:func:`ssd_chunked`). A scalar decay per head turns the scan into the SSD block decomposition of
the Mamba-2 paper ("ssd_minimal_discrete"): attention-like matmuls inside a chunk, a short recurrence over
chunk states between chunks, all with plain autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Time steps per chunk of the Mamba-1 scan: large enough to amortise Python overhead, small enough that
#: a chunk's ``[chunk, B, N, D]`` buffers stay in cache.
SCAN_CHUNK = 16
#: Chunk length of the pure-PyTorch SSD (the CUDA kernels use the config's 256; the maths is the same).
SSD_CHUNK = 64


def _chunk_decay_and_input(
    delta: Tensor, w: Tensor, At: Tensor, B: Tensor, buf_a: Tensor, buf_h: Tensor, resets: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``exp(delta A)`` and ``w B`` of one chunk, ``[T, B, N, D]``, written into the given buffers; the
    decay is 0 where ``resets`` ``[T, B]`` is set (a packed sequence starts: nothing carries into it)."""
    decay = torch.mul(delta.unsqueeze(-2), At, out=buf_a).exp_()
    if resets is not None:
        decay.masked_fill_(resets[:, :, None, None], 0.0)
    inputs = torch.mul(w.unsqueeze(-2), B.unsqueeze(-1), out=buf_h)
    return decay, inputs


def _recur_forward(states: Tensor, decay: Tensor, h0: Tensor) -> None:
    """In place: ``states[t] += decay[t] * states[t-1]`` with ``states[-1] = h0`` (inputs become states)."""
    states[0].addcmul_(h0, decay[0])
    for t in range(1, states.shape[0]):
        states[t].addcmul_(states[t - 1], decay[t])


def _recur_backward(grads: Tensor, decay: Tensor, carry: Tensor) -> None:
    """In place, backwards in time: ``grads[t] += decay[t+1] * grads[t+1]`` with the chunk after's carry."""
    last = grads.shape[0] - 1
    grads[last].add_(carry)
    for t in range(last - 1, -1, -1):
        grads[t].addcmul_(grads[t + 1], decay[t + 1])


class _SelectiveScan(torch.autograd.Function):
    """``y_t = C_t . h_t`` of Mamba-1's recurrence; inputs batch-major, computed time-major in fp32.

    States are laid out ``[T, B, N, D]`` (channels last): every reduction then runs along contiguous rows,
    and the per-step products with ``B_t``/``C_t`` are row-vector-times-matrix products.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, resets: Tensor | None
    ) -> Tensor:
        ftype = torch.promote_types(u.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        ut, dt = (t.transpose(0, 1).to(ftype).contiguous() for t in (u, delta))  # [L, B, D]
        rt = None if resets is None else resets.t().contiguous()  # [L, B]
        Bt, Ct = (t.transpose(0, 1).to(ftype).contiguous() for t in (B, C))  # [L, B, N]
        At = A.to(ftype).t().contiguous()  # [N, D]
        length, batch, dim = ut.shape
        n_state = At.shape[0]
        chunk = max(1, min(chunk, length))
        n_chunks = -(-length // chunk)
        w = dt * ut
        y = ut.new_empty(length, batch, dim)
        starts = ut.new_empty(n_chunks, batch, n_state, dim)
        buf_a = ut.new_empty(chunk, batch, n_state, dim)
        buf_h = torch.empty_like(buf_a)
        h = ut.new_zeros(batch, n_state, dim)
        for c in range(n_chunks):
            s, e = c * chunk, min(length, (c + 1) * chunk)
            starts[c] = h
            decay, states = _chunk_decay_and_input(
                dt[s:e], w[s:e], At, Bt[s:e], buf_a[: e - s], buf_h[: e - s], None if rt is None else rt[s:e]
            )
            _recur_forward(states, decay, starts[c])
            h = states[-1]
            y[s:e] = torch.matmul(Ct[s:e].unsqueeze(-2), states).squeeze(-2)
        ctx.save_for_backward(ut, dt, At, Bt, Ct, starts)
        ctx.chunk = chunk
        ctx.resets = rt
        ctx.dtypes = (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype)
        return y.transpose(0, 1)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        ut, dt, At, Bt, Ct, starts = ctx.saved_tensors
        chunk = ctx.chunk
        length, batch, dim = ut.shape
        n_state = At.shape[0]
        dyt = dy.transpose(0, 1).to(ut.dtype).contiguous()
        w = dt * ut
        dw = torch.empty_like(ut)
        ddelta = torch.empty_like(ut)
        dB = torch.empty_like(Bt)
        dC = torch.empty_like(Ct)
        dAt = torch.zeros_like(At)
        buf_a = ut.new_empty(chunk, batch, n_state, dim)
        buf_h = torch.empty_like(buf_a)
        buf_g = torch.empty_like(buf_a)
        carry = ut.new_zeros(batch, n_state, dim)  # dL/dh at the last step of the previous chunk
        for c in range(starts.shape[0] - 1, -1, -1):
            s, e = c * chunk, min(length, (c + 1) * chunk)
            n = e - s
            reset = None if ctx.resets is None else ctx.resets[s:e]
            decay, states = _chunk_decay_and_input(dt[s:e], w[s:e], At, Bt[s:e], buf_a[:n], buf_h[:n], reset)
            _recur_forward(states, decay, starts[c])
            # grads[t] = dL/dh_t: from y_t directly, then from h_{t+1} through the decay.
            grads = torch.mul(dyt[s:e].unsqueeze(-2), Ct[s:e].unsqueeze(-1), out=buf_g[:n])
            _recur_backward(grads, decay, carry)
            dC[s:e] = torch.matmul(states, dyt[s:e].unsqueeze(-1)).squeeze(-1)
            dw[s:e] = torch.matmul(Bt[s:e].unsqueeze(-2), grads).squeeze(-2)
            dB[s:e] = torch.matmul(grads, w[s:e].unsqueeze(-1)).squeeze(-1)
            # dL/d(delta_t A) = grads_t * decay_t * h_{t-1}; grads * decay at t is also the carry to t-1.
            scaled = grads.mul_(decay)
            carry = scaled[0].clone()
            scaled[1:].mul_(states[:-1])
            scaled[0].mul_(starts[c])
            dAt += torch.mul(scaled, dt[s:e].unsqueeze(-2), out=buf_h[:n]).sum(dim=(0, 1))
            torch.sum(scaled.mul_(At), dim=-2, out=ddelta[s:e])
        ddelta.addcmul_(dw, ut)
        du = dw.mul_(dt)
        grads_out = (du, ddelta, dAt.t(), dB, dC)
        out: list[Tensor | None] = []
        for g, dtype, needed in zip(grads_out, ctx.dtypes, ctx.needs_input_grad[:5], strict=True):
            if not needed:
                out.append(None)
            elif g.dim() == 3:
                out.append(g.transpose(0, 1).to(dtype))
            else:
                out.append(g.to(dtype))
        return (*out, None, None)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk: int = SCAN_CHUNK,
    resets: Tensor | None = None,
) -> Tensor:
    """Mamba-1's selective scan without the ``D`` skip and the gate.

    Shapes: ``u, delta: [B, L, D]`` (``delta`` after softplus), ``A: [D, N]`` (negative), ``B, C: [B, L, N]``;
    returns ``y: [B, L, D]`` in fp32 (fp64 for fp64 inputs) with ``y_t = C_t . h_t``. ``resets: [B, L]``
    (bool): the state restarts from zero at these steps (the first token of each packed sequence).
    """
    with torch.autocast(device_type=u.device.type, enabled=False):
        return _SelectiveScan.apply(u, delta, A, B, C, chunk, resets)


def selective_scan_reference(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, resets: Tensor | None = None
) -> Tensor:
    """The recurrence one step at a time, in the inputs' dtype: the test oracle for :func:`selective_scan`."""
    batch, length, dim = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        if resets is not None:
            h = h * (~resets[:, t, None, None]).to(h.dtype)
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def segsum(x: Tensor) -> Tensor:
    """``out[..., i, j] = x[..., j+1] + ... + x[..., i]`` for ``j <= i``, ``-inf`` above the diagonal.

    Summed with masked cumulative sums rather than differences of one cumsum, which loses precision.
    """
    n = x.shape[-1]
    x = x.unsqueeze(-1).expand(*x.shape, n)
    strict_lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=-1)
    out = torch.cumsum(x.masked_fill(~strict_lower, 0.0), dim=-2)
    lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device))
    return out.masked_fill(~lower, float("-inf"))


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk: int = SSD_CHUNK,
    segments: Tensor | None = None,
) -> Tensor:
    """Mamba-2's state space dual (SSD) scan, chunked, without the ``D`` skip and the gate.

    Shapes: ``x: [b, l, h, p]``, ``dt: [b, l, h]`` (after softplus and clamping), ``A: [h]`` (negative),
    ``B, C: [b, l, g, n]`` with ``h`` a multiple of ``g``; returns ``y: [b, l, h, p]`` in fp32 (fp64 for
    fp64 inputs). Heads share their group's ``B``/``C`` without copies (heads split as ``g x r``).
    ``segments: [b, l]`` (ints, non-decreasing along ``l``): no state passes between steps of different
    segments (packed sequences; mamba_ssm's ``seq_idx``).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _ssd_chunked(x, dt, A, B, C, chunk, segments)


def _ssd_chunked(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, segments: Tensor | None
) -> Tensor:
    ftype = torch.promote_types(x.dtype, torch.float32)
    x, dt, A, B, C = (t.to(ftype) for t in (x, dt, A, B, C))
    batch, length, heads, hdim = x.shape
    groups, n_state = B.shape[2], B.shape[3]
    rep = heads // groups
    chunk = max(1, min(chunk, length))
    pad = (-length) % chunk
    if pad:  # zero dt: no decay and no input, so padded steps change nothing before them
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
        if segments is not None:
            segments = F.pad(segments, (0, pad), mode="replicate")
    nc = (length + pad) // chunk
    # Packed sequences: which (position, position) pairs, chunk ends and chunk starts share a segment.
    same = keep_end = keep_start = carry = None
    if segments is not None:
        seg = segments.view(batch, nc, chunk)  # [b, c, l]
        same = (seg.unsqueeze(-1) == seg.unsqueeze(-2))[:, :, None, None]  # [b, c, 1, 1, l, s]
        keep_end = (seg == seg[..., -1:]).to(ftype)  # position reaches its chunk's end state
        previous_end = torch.cat([seg[:, :1, :1], seg[:, :-1, -1:]], dim=1)  # [b, c, 1]
        keep_start = (seg == previous_end).to(ftype)  # position reads the state carried into its chunk
        carry = (seg[..., -1] == previous_end[..., 0]).to(ftype)  # [b, c]: the chunk carries its start state
    # Shapes: b batch, c chunk, l/s position in chunk, g group, r head in group, p head dim, n state.
    xdt = (x * dt.unsqueeze(-1)).view(batch, nc, chunk, groups, rep, hdim)  # [b, c, l, g, r, p]
    Bc = B.view(batch, nc, chunk, groups, n_state).transpose(2, 3)  # [b, c, g, l, n]
    Cc = C.view(batch, nc, chunk, groups, n_state).transpose(2, 3)
    a = (dt * A).view(batch, nc, chunk, groups, rep).permute(0, 1, 3, 4, 2)  # [b, c, g, r, l]
    a_cum = torch.cumsum(a, dim=-1)

    # 1. Within chunks: y = (C B^T o causal decay) (x dt), attention-like. The decay exp(a_cum[l] - a_cum[s])
    # takes differences of the cumulative sum, as mamba_ssm's Triton kernels do.
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    visible = causal if same is None else causal & same
    decay = torch.exp((a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2)).masked_fill(~visible, float("-inf")))
    scores = torch.matmul(Cc, Bc.transpose(-1, -2)).unsqueeze(3) * decay  # [b, c, g, r, l, s]
    y_diag = torch.matmul(scores, xdt.permute(0, 1, 3, 4, 2, 5))  # [b, c, g, r, l, p]

    # 2. Each chunk's final state from its own inputs: B^T (x dt decayed to the chunk end).
    to_end = torch.exp(a_cum[..., -1:] - a_cum).permute(0, 1, 4, 2, 3).unsqueeze(-1)  # [b, c, l, g, r, 1]
    if keep_end is not None:
        to_end = to_end * keep_end[..., None, None, None]
    weighted = (xdt * to_end).view(batch, nc, chunk, groups, rep * hdim).transpose(2, 3)
    chunk_states = torch.matmul(Bc.transpose(-1, -2), weighted)  # [b, c, g, n, r p]

    # 3. States at chunk starts: a short recurrence over the chunks (unbind, not indexing: its backward is
    # one stack instead of a zero-filled full-size gradient per chunk).
    chunk_decay = torch.exp(a_cum[..., -1])  # [b, c, g, r]
    if carry is not None:
        chunk_decay = chunk_decay * carry[..., None, None]
    chunk_decay = chunk_decay.view(batch, nc, groups, 1, rep, 1).unbind(1)
    chunk_states = chunk_states.view(batch, nc, groups, n_state, rep, hdim).unbind(1)
    state = torch.zeros_like(chunk_states[0])
    starts = []
    for decay_c, states_c in zip(chunk_decay, chunk_states, strict=True):
        starts.append(state)
        state = torch.addcmul(states_c, state, decay_c)
    start_states = torch.stack(starts, dim=1).view(batch, nc, groups, n_state, rep * hdim)

    # 4. The chunk's start state read out by C and decayed to each position.
    y_off = torch.matmul(Cc, start_states).view(batch, nc, groups, chunk, rep, hdim)  # [b, c, g, l, r, p]
    y_off = y_off * torch.exp(a_cum).transpose(-1, -2).unsqueeze(-1)
    if keep_start is not None:
        y_off = y_off * keep_start[:, :, None, :, None, None]
    y = y_diag.permute(0, 1, 4, 2, 3, 5) + y_off.transpose(2, 3)  # [b, c, l, g, r, p]
    return y.reshape(batch, nc * chunk, heads, hdim)[:, :length]


def ssd_reference(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, segments: Tensor | None = None
) -> Tensor:
    """Mamba-2's recurrence one step at a time (``h_t = exp(dt A) h + dt x B^T``): the oracle for SSD."""
    batch, length, heads, hdim = x.shape
    rep = heads // B.shape[2]
    Bh, Ch = B.repeat_interleave(rep, dim=2), C.repeat_interleave(rep, dim=2)  # [b, l, h, n]
    h = x.new_zeros(batch, heads, hdim, B.shape[-1])
    ys = []
    for t in range(length):
        if segments is not None and t > 0:
            h = h * (segments[:, t] == segments[:, t - 1]).to(h.dtype)[:, None, None, None]
        da = torch.exp(dt[:, t] * A)[..., None, None]
        h = da * h + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((h * Ch[:, t, :, None, :]).sum(-1))
    return torch.stack(ys, dim=1)
