"""Evo 2 inference in bounded memory: layer by layer over the whole input, each layer over
pieces of the sequence, each piece continuing from an explicit carried state.

`run_block(model, i, residual, state)` runs block i on positions [state.position,
state.position + n) given its `BlockState` at state.position, and advances the state: what a
block needs from the positions before a piece is
- the short featurizer filter's last K-1 projections (`tail`, K = short_filter_length);
- hcs/hcm: the last taps-1 inputs u = x1 v of the explicit filter (`inner_tail`);
- hcl: the modal state s[b, c, k] = sum_{t < position} exp(log_poles[c, k] (position-1-t))
  u[b, c, t] per channel and pole: the long filter h[c, t] = sum_k residues[c, k] exp(log_poles
  [c, k] t) is a diagonal linear recurrence, so the outputs of a piece are its own convolution
  with the first n taps plus sum_k residues[c, k] s[b, c, k] exp(log_poles[c, k] (j + 1)) at
  its position j, exactly;
- attention: the rotary keys and values of every position before (`keys`, `values`).
`run` drives it: the whole input's float32 residual stream, one block at a time over the
pieces; `run(..., capture_at=p)` also returns every block's state at position p (cloned), and
`run(ids_suffix, start=states)` computes positions p.. of an input from those states alone
(the suffix of an ALT window from its REF window's states, issue 28).

Per piece, a hyena block makes three passes: (1) in chunks of rows, pre_norm and the
projections, written channel-major (3H, positions) after the carried tail, so the short filter
and gates run along contiguous rows; (2) the short filter (direct, K taps), de-interleave as
row-strided views, u = x1 v, and the hcs (direct), hcm (genomeconv.kernels.fftconv with the
carried inputs as history: a partial convolution) or hcl filter (fftconv with the piece's
taps, generated in float32 per channel group with the exp(log_poles t) powers that also give
the state terms), gated by x2 in place; (3) in chunks of rows, out_filter_dense into the
residual, post_norm and the MLP into the residual. An attention block runs the chunks once:
projections, rotary, keys and values appended to the state, then causal attention of the
piece's queries over every key so far (torch's scaled_dot_product_attention; for a piece that
does not start at 0, the prefix and the piece's own keys are two calls merged by their
log-sum-exp), out_proj, MLP.

Precision: `dtype` (default: the model's weights') is the dtype of the matmuls (projections,
out_filter_dense, MLP, Wqkv, out_proj, unembedding); everything else runs in float32 (float64
for float64 matmuls): norms, short filters, gates, the long convolutions, the modal filters and
states, the residual stream. Attention (its keys and values too) runs in `dtype`, as the
official code runs it: in bfloat16 one layer's keys and values of a megabase input take half
the memory.

Memory (memory.py's `memory_estimate`): weights + the float32 residual (4 B L H bytes) + one
attention layer's keys and values (2 B L H bytes of `dtype`) + one piece's work: B (12 H n +
3 s H (n+K-1)) bytes for a hyena piece of n positions, s the matmul dtype's size (u = x1 v
reuses the projections' buffer),
about 4 B n H x 4 for an attention piece, an hcl channel group's taps and state terms
(MODAL_GROUP_BYTES), and chunk buffers (chunk rows x (2 inner + 8 H) values). README "Evo 2"
has the formula and measurements. A batch whose pieces would be shorter than its rows runs in
row groups of whole rows (`rows_per_pass`): B is then a group's rows, plus every row's output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genomeconv.kernels import SpectrumCache, fftconv
from genomeconv.kernels.linear import mm_t
from genomeconv.models.families.evo2.layers import MLP_ACTIVATIONS, rotate

DEFAULT_CHUNK = 4096  # rows per matmul/pointwise chunk
PIECE_BYTES = 512 << 20  # target bytes of one hyena piece's work buffers (sets the piece length)
MODAL_GROUP_BYTES = 64 << 20  # taps and state terms of one hcl channel group
CORRELATE_BLOCK = 2048  # positions per cast block of `_correlate` (its passes stay in cache)
MAX_MASK = 1 << 24  # mask elements per attention call where a mask is materialized
NO_CACHE = SpectrumCache(max_bytes=0)  # filters change per piece: caching only holds memory


@dataclass
class BlockState:
    """What one block carries into the positions from `position` on (module docstring)."""

    position: int = 0
    tail: torch.Tensor | None = None  # hyena: (B, 3H, K-1) projections before it (matmul dtype)
    inner_tail: torch.Tensor | None = None  # hcs/hcm: (B, H, taps-1) u = x1 v before it
    modal: torch.Tensor | None = None  # hcl: (B, H, state_size) modal states at it
    keys: torch.Tensor | None = None  # attention: (B, heads, >= position, head_dim), rotary
    values: torch.Tensor | None = None

    def clone(self, rows: torch.Tensor | None = None) -> "BlockState":
        """An independent copy (keys and values: the first `position` only), of the batch rows
        `rows` only when given (the REF windows an ALT batch continues from)."""
        def copy(t: torch.Tensor | None, upto: int | None = None) -> torch.Tensor | None:
            if t is None:
                return None
            t = t if upto is None else t[:, :, :upto]
            return t.clone() if rows is None else t[rows]
        return BlockState(self.position, copy(self.tail), copy(self.inner_tail),
                          copy(self.modal), copy(self.keys, self.position),
                          copy(self.values, self.position))

    @staticmethod
    def cat(states: Sequence["BlockState"]) -> "BlockState":
        """The states of consecutive row groups at one position as one state of all their rows
        (keys and values: the first `position`)."""
        def joined(name: str) -> torch.Tensor | None:
            parts = [getattr(s, name) for s in states]
            if parts[0] is None:
                return None
            if name in ("keys", "values"):
                parts = [t[:, :, :states[0].position] for t in parts]
            return torch.cat(parts)
        return BlockState(states[0].position, *(joined(name) for name in (
            "tail", "inner_tail", "modal", "keys", "values")))


@dataclass
class Run:
    """`run`'s result: hidden states (B, n, width) float32 for the positions run, and for each
    position of `capture_at` every block's state there (None when not asked)."""

    hidden: torch.Tensor
    states: dict[int, list[BlockState]] | None = None


def initial_state(block: nn.Module, batch: int, capacity: int, dtype: torch.dtype,
                  work: torch.dtype) -> BlockState:
    """A block's state at position 0: zeros (the projections' tail in the matmul dtype, the
    rest in the work dtype); for attention, room for the keys and values (in the matmul dtype)
    of `capacity` positions."""
    device = block.pre_norm.scale.device
    if block.kind == "attn":
        mha = block.inner_mha_cls
        kv = (batch, mha.heads, capacity, mha.head_dim)
        return BlockState(0, keys=torch.empty(kv, dtype=dtype, device=device),
                          values=torch.empty(kv, dtype=dtype, device=device))
    f = block.filter
    H, K = f.cfg.hidden_size, f.short_filter_weight.shape[-1]
    state = BlockState(0, tail=torch.zeros(batch, 3 * H, K - 1, dtype=dtype, device=device))
    if f.kind == "hcl":
        state.modal = torch.zeros(batch, H, f.residues.shape[1], dtype=work, device=device)
    else:
        state.inner_tail = torch.zeros(batch, H, f.h.shape[-1] - 1, dtype=work, device=device)
    return state


class BlockWeights:
    """One block's parameters as inference uses them: matmul weights in the matmul dtype,
    everything else in the work dtype (per-channel hcs/hcm taps, poles and residues as
    (H, state_size)); built per call and block, so a model holds one copy of its weights."""

    def __init__(self, block: nn.Module, dtype: torch.dtype, work: torch.dtype):
        def mat(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
            bias = None if linear.bias is None else linear.bias.detach().to(dtype)
            return linear.weight.detach().to(dtype), bias

        def vec(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(work)

        self.kind = block.kind
        self.eps = block.pre_norm.eps
        self.pre, self.post = vec(block.pre_norm.scale), vec(block.post_norm.scale)
        mlp = block.mlp
        self.l1, self.l2, self.l3 = mlp.l1.weight.detach().to(dtype), mlp.l2.weight.detach().to(
            dtype), mlp.l3.weight.detach().to(dtype)
        self.act = None if mlp.activation is None else MLP_ACTIVATIONS[mlp.activation]
        if block.kind == "attn":
            mha = block.inner_mha_cls
            self.qkv, self.out = mat(mha.Wqkv), mat(mha.out_proj)
            self.mha = mha
            return
        f = block.filter
        self.filter = f
        self.proj, self.out = mat(block.projections), mat(block.out_filter_dense)
        self.short, self.short_bias = vec(f.short_filter_weight[:, 0]), vec(f.short_filter_bias)
        self.D = vec(f.D)
        if f.kind == "hcl":
            self.log_poles, self.residues = vec(f.log_poles[..., 0]), vec(f.residues)
        else:
            self.taps = vec(f.taps())


class Workspace:
    """Buffers reused by every block and piece of one `run` (fresh large tensors cost a page
    fault per 4 KiB each time): the hyena piece buffers, chunk buffers, the low-precision
    casts of matmul inputs (None when the matmul dtype is the work dtype). Matmul outputs are
    fresh (`mm_t`: oneDNN writes no out=), the same sizes the memory formula counts."""

    def __init__(self, model: nn.Module, batch: int, piece: int, chunk: int,
                 dtype: torch.dtype, work: torch.dtype):
        cfg = model.config
        device = model.embedding_layer.weight.device
        H, K = cfg.hidden_size, cfg.short_filter_length
        hist = max([cfg.hcm_filter_length - 1] * bool(cfg.hcm_layer_idxs)
                   + [cfg.hcs_filter_length - 1] * bool(cfg.hcs_layer_idxs) + [0])

        def empty(*shape, dt=work):
            return torch.empty(*shape, dtype=dt, device=device)

        self.dtype, self.work = dtype, work
        self.piece, self.chunk = piece, chunk
        self.z = self.zf = self.u = None
        if len(cfg.attn_layer_idxs) < cfg.num_layers:
            # the projections (z) stay in the matmul dtype they come in; u = x1 v (work dtype)
            # reuses z's bytes, dead once the short filter has read them
            zb = batch * 3 * H * (K - 1 + piece) * dtype.itemsize
            ub = batch * H * (hist + piece) * work.itemsize
            flat = torch.empty(max(zb, ub), dtype=torch.uint8, device=device)
            self.z = flat[:zb].view(dtype).view(batch, 3 * H, K - 1 + piece)
            self.u = flat[:ub].view(work).view(batch, H, hist + piece)
            self.zf = empty(batch, 3 * H, piece)
        self.norm = empty(chunk, H)
        self.low = None if dtype == work else empty(chunk, H, dt=dtype)


class Tap:
    """Collects the output of one module inside a block (`what`: "pre_norm", "mlp.l1", ...)
    into `out` (B, n, width) float32 for positions `origin`..; positions and rows come
    span by span (`spans`)."""

    def __init__(self, what: str, out: torch.Tensor, origin: int):
        self.what, self.out, self.origin = what, out, origin

    def __call__(self, what: str | tuple[str, ...], span: Span, rows: torch.Tensor) -> None:
        """Record rows ((b1 - b0) c, width) of a span when `what` is ours."""
        if self.what == what or (isinstance(what, tuple) and self.what in what):
            i = span.start - self.origin
            self.out[span.b0:span.b1, i:i + span.c] = rows.reshape(span.rows, span.c, -1)


def _no_tap(what, span, rows) -> None:
    pass


@dataclass(frozen=True)
class Span:
    """Batch rows b0..b1-1 at piece positions c0..c0+c-1 (absolute position `start`): the unit
    of the chunked pointwise and matmul passes."""

    b0: int
    b1: int
    c0: int
    c: int
    start: int

    @property
    def rows(self) -> int:
        return self.b1 - self.b0


def spans(B: int, n: int, chunk: int, origin: int) -> list[Span]:
    """Cover a piece (B, n) in matmuls of at most `chunk` positions (rows x positions): whole
    batch rows together when a row is shorter than a chunk (short windows, reads), else one
    row's positions in chunks; `origin`: the piece's first absolute position."""
    if n <= chunk:
        per = max(1, chunk // max(n, 1))
        return [Span(b0, min(B, b0 + per), 0, n, origin) for b0 in range(0, B, per)]
    return [Span(b, b + 1, c0, min(n, c0 + chunk) - c0, origin + c0)
            for b in range(B) for c0 in range(0, n, chunk)]


def _flat(x: torch.Tensor) -> torch.Tensor | None:
    """x (rows, c, H) as (rows c, H) when that is a view (one row, or whole rows), else None."""
    return x.view(-1, x.shape[-1]) if x.is_contiguous() else None


def _rms(x: torch.Tensor, scale: torch.Tensor, eps: float, out: torch.Tensor) -> torch.Tensor:
    """RMSNorm of rows x (..., H) into out (same shape): scale * x / (|x| / sqrt(H) + eps)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).mul_(x.shape[-1] ** -0.5).add_(eps)
    return torch.div(x, norm, out=out).mul_(scale)


def _cast(x: torch.Tensor, buf: torch.Tensor | None) -> torch.Tensor:
    """x (m, H) in the matmul dtype: itself, or copied into buf[:m] (a preallocated cast)."""
    return x if buf is None else buf[:x.shape[0]].copy_(x)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias) in the weights' dtype."""
    y = mm_t(x, weight)
    return y if bias is None else y.add_(bias)


def _correlate(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None,
               out: torch.Tensor) -> torch.Tensor:
    """Depthwise cross-correlation along rows with the last tap on the current position:
    x (B, C, K-1+n) holds the K-1 inputs before the n outputs, taps (C, K); out (B, C, n).
    Runs CORRELATE_BLOCK positions at a time, so that its K + 1 passes stay in cache, with x
    (the projections come in the matmul dtype) cast to out's dtype block by block: a
    mixed-dtype product would cast each shifted slice again (bench_evo2.py part d: 262 ms a
    layer of 65,536 positions x 768 channels mixed and whole, 59 ms in cast blocks)."""
    K, n = taps.shape[1], out.shape[-1]
    for s in range(0, n, CORRELATE_BLOCK):
        e = min(n, s + CORRELATE_BLOCK)
        xs, o = x[..., s:e + K - 1].to(out.dtype), out[..., s:e]
        torch.mul(xs[..., K - 1:], taps[:, K - 1, None], out=o)
        for t in range(K - 1):
            o.addcmul_(xs[..., t:t + e - s], taps[:, t, None])
        if bias is not None:
            o.add_(bias[:, None])
    return out


def _normed(rows: torch.Tensor, scale: torch.Tensor, eps: float, ws: Workspace
            ) -> torch.Tensor:
    """RMSNorm of rows (r, c, H) into the workspace, as (r c, H)."""
    m = rows.shape[0] * rows.shape[1]
    return _rms(rows, scale, eps, ws.norm[:m].view(rows.shape)).view(m, -1)


def _mlp(w: BlockWeights, rows: torch.Tensor, ws: Workspace, tap, span: Span) -> None:
    """rows (r, c, H) float32 residual += mlp(post_norm(rows)), in place."""
    a = _normed(rows, w.post, w.eps, ws)
    tap("post_norm", span, a)
    a = _cast(a, ws.low)
    h1 = mm_t(a, w.l1)
    h2 = mm_t(a, w.l2)
    tap("mlp.l1", span, h1)
    tap("mlp.l2", span, h2)
    if w.act is not None:
        h1.copy_(w.act(h1))
    h1.mul_(h2)
    _add_linear(rows, h1, w.l3, None, ws, tap, ("mlp", "mlp.l3"), span)


def _add_linear(rows: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, ws: Workspace, tap, what, span: Span) -> None:
    """rows (r, c, H) float32 += x (r c, in) @ weight.T + bias: added straight into rows
    when the matmul runs in float32, nothing is recorded and rows flatten to a view, else
    computed in the matmul dtype (x cast first), recorded as `what` and added."""
    flat = _flat(rows)
    if ws.dtype == rows.dtype and tap is _no_tap and flat is not None:
        flat += mm_t(x.to(rows.dtype), weight)
        if bias is not None:
            flat += bias
        return
    y = _linear(x if x.dtype == ws.dtype else x.to(ws.dtype), weight, bias)
    tap(what, span, y)
    rows += y.view(rows.shape)


class ModalPowers:
    """exp(log_poles t) for t = 0 .. m T - 1 of a channel group (G, S), held factored:
    `base` (G, S, T) = p^t for t < T and `blocks` (G, S, m) = p^(j T), so p^(j T + t) = blocks[j]
    base[t] (two rounded exps, never a (G, S, n) tensor). Sums of coefficient-weighted powers
    over the poles become batched matmuls of G m S T = G S n multiply-adds."""

    def __init__(self, log_poles: torch.Tensor, length: int):
        self.T = 1 << max(4, (length.bit_length() + 1) // 2)  # about sqrt(length)
        self.m = -(-length // self.T)
        dt, dev = log_poles.dtype, log_poles.device
        lp = log_poles[..., None]
        self.base = torch.exp(lp * torch.arange(self.T, dtype=dt, device=dev))
        self.blocks = torch.exp(lp * torch.arange(0, self.m * self.T, self.T, dtype=dt,
                                                  device=dev))

    def series(self, coef: torch.Tensor, length: int) -> torch.Tensor:
        """sum_s coef[..., g, s] p_s^t for t < length: coef (R, G, S) -> (R, G, length)."""
        R, G, S = coef.shape
        a = (coef.transpose(0, 1)[:, :, None, :] * self.blocks.transpose(1, 2)[:, None])
        y = torch.bmm(a.reshape(G, R * self.m, S), self.base)  # (G, R m, T)
        return y.view(G, R, self.m * self.T)[..., :length].transpose(0, 1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """sum_t x[..., g, t] p_s^t over t < x's length: x (R, G, length) -> (R, G, S)."""
        R, G, n = x.shape
        padded = x.new_zeros(G, R, self.m * self.T)
        padded[..., :n] = x.transpose(0, 1)
        q = torch.bmm(padded.view(G, R * self.m, self.T), self.base.transpose(1, 2))
        q = q.view(G, R, self.m, -1) * self.blocks.transpose(1, 2)[:, None]
        return q.sum(2).transpose(0, 1)


def _modal(u: torch.Tensor, w: BlockWeights, state: BlockState, out: torch.Tensor,
           advance: bool) -> None:
    """The hcl filter of a piece: out (B, H, n) = conv(u, h[:n]) + D u + the carried modal
    states' outputs; with `advance`, the states move to the piece's end. Per channel group:
    the taps h[c, t] = sum_s residues p_s^t (generated in the work dtype, float32 as the
    official code), the carried terms sum_s residues state p_s^(j+1) at output j, the new states
    p^n state + sum_j u[j] p^(n-1-j) (ModalPowers)."""
    B, H, n = u.shape
    G = max(1, min(H, MODAL_GROUP_BYTES // (4 * n * u.element_size() * (B + 1))))
    for c0 in range(0, H, G):
        cs = slice(c0, min(H, c0 + G))
        lp = w.log_poles[cs]
        powers = ModalPowers(lp, n + 1)
        taps = powers.series(w.residues[None, cs], n)[0]
        if advance:
            fresh = powers.project(u[:, cs].flip(-1))
        fftconv(u[:, cs], taps, w.D[cs], cache=NO_CACHE, out=out[:, cs])
        if state.position > 0:  # the carried states' outputs: residues state p^(j+1)
            out[:, cs] += powers.series(w.residues[cs] * lp.exp() * state.modal[:, cs], n)
        if advance:
            state.modal[:, cs] = torch.exp(lp * n) * state.modal[:, cs] + fresh


def _hyena_piece(w: BlockWeights, r: torch.Tensor, ws: Workspace, state: BlockState,
                 tap, advance: bool) -> None:
    """A hyena block on r (B, n, H), the residual at positions state.position.. (run_block)."""
    B, n = r.shape[:2]
    f = w.filter
    K = w.short.shape[1]
    p0 = state.position
    z = ws.z[..., :K - 1 + n]
    z[..., :K - 1] = state.tail
    pieces = spans(B, n, ws.chunk, p0)
    for sp in pieces:
        a = _normed(r[sp.b0:sp.b1, sp.c0:sp.c0 + sp.c], w.pre, w.eps, ws)
        tap("pre_norm", sp, a)
        x = mm_t(w.proj[0], _cast(a, ws.low))  # channel-major (3H, r c), matmul dtype
        dest = z[sp.b0:sp.b1, :, K - 1 + sp.c0:K - 1 + sp.c0 + sp.c]
        dest.copy_(x.view(-1, sp.rows, sp.c).transpose(0, 1))
        if w.proj[1] is not None:
            dest += w.proj[1][:, None]
        tap("projections", sp, dest.transpose(1, 2))
    state.tail = z[..., n:].clone()
    zf = ws.zf[..., :n]
    _correlate(z, w.short, w.short_bias, zf)
    x2, x1, v = f.split(zf)
    y = x1  # the filter output overwrites x1, which u = x1 v no longer needs
    if f.kind == "hcl":
        u = ws.u[..., :n]
        torch.mul(x1, v, out=u)
        _modal(u, w, state, y, advance)
    else:
        hist = w.taps.shape[1] - 1
        u = ws.u[..., :hist + n]
        u[..., :hist] = state.inner_tail
        torch.mul(x1, v, out=u[..., hist:])
        state.inner_tail = u[..., n:].clone()
        if f.kind == "hcs":
            _correlate(u, w.taps, None, y)
        else:
            fftconv(u, w.taps, w.D, history=hist, cache=NO_CACHE, out=y)
    y.mul_(x2)
    for sp in pieces:
        rows = r[sp.b0:sp.b1, sp.c0:sp.c0 + sp.c]
        g = y[sp.b0:sp.b1, :, sp.c0:sp.c0 + sp.c].transpose(1, 2)
        g = g[0] if sp.rows == 1 else g.reshape(-1, g.shape[-1])  # one row: a strided view
        tap("filter", sp, g)
        _add_linear(rows, g, *w.out, ws, tap, "out_filter_dense", sp)
        _mlp(w, rows, ws, tap, sp)
    state.position += n


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
           scale: float) -> torch.Tensor:
    """Causal attention of queries at positions start..start+n-1 (q (B, heads, n, hd)) over
    keys 0..start+n-1: one causal call when start is 0; else, on the CPU, the prefix keys and
    the piece's own keys in two calls merged by their log-sum-exp (torch's CPU flash kernel
    returns it), elsewhere a bottom-right causal mask in blocks of queries."""
    n = q.shape[2]
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        o1, l1 = flash(q, k[:, :, :start], v[:, :, :start], 0.0, False, scale=scale)
        o2, l2 = flash(q, k[:, :, start:], v[:, :, start:], 0.0, True, scale=scale)
        top = torch.maximum(l1, l2)
        w1, w2 = (l1 - top).exp_()[..., None], (l2 - top).exp_()[..., None]
        return ((o1 * w1 + o2 * w2) / (w1 + w2)).to(q.dtype)
    out = torch.empty_like(q)
    keys = k.shape[2]
    block = max(1, MAX_MASK // keys)
    for q0 in range(0, n, block):
        q1 = min(n, q0 + block)
        mask = (torch.arange(keys, device=q.device)[None, :]
                <= torch.arange(start + q0, start + q1, device=q.device)[:, None])
        out[:, :, q0:q1] = F.scaled_dot_product_attention(q[:, :, q0:q1], k, v, attn_mask=mask,
                                                          scale=scale)
    return out


def _attention_piece(w: BlockWeights, r: torch.Tensor, ws: Workspace, state: BlockState,
                     tap) -> None:
    """An attention block on r (B, n, H), the residual at positions state.position.."""
    B, n, H = r.shape
    mha = w.mha
    heads, hd = mha.heads, mha.head_dim
    p0 = state.position
    _reserve(state, p0 + n)
    q = torch.empty(B, heads, n, hd, dtype=ws.dtype, device=r.device)
    pieces = spans(B, n, ws.chunk, p0)
    for sp in pieces:
        a = _normed(r[sp.b0:sp.b1, sp.c0:sp.c0 + sp.c], w.pre, w.eps, ws)
        tap("pre_norm", sp, a)
        x = _linear(_cast(a, ws.low), *w.qkv)
        qc, kc, vc = mha.qkv(x.view(sp.rows, sp.c, -1))  # (rows, heads, c, hd)
        cos, sin = mha.rotary_emb.cos_sin(sp.start, sp.start + sp.c, r.device)
        at = slice(p0 + sp.c0, p0 + sp.c0 + sp.c)
        q[sp.b0:sp.b1, :, sp.c0:sp.c0 + sp.c] = rotate(qc, cos, sin)
        state.keys[sp.b0:sp.b1, :, at] = rotate(kc, cos, sin)
        state.values[sp.b0:sp.b1, :, at] = vc
    o = attend(q, state.keys[:, :, :p0 + n], state.values[:, :, :p0 + n], p0,
               1.0 / math.sqrt(hd))
    del q
    for sp in pieces:
        rows = r[sp.b0:sp.b1, sp.c0:sp.c0 + sp.c]
        oc = o[sp.b0:sp.b1, :, sp.c0:sp.c0 + sp.c].transpose(1, 2).reshape(-1, H)
        _add_linear(rows, oc, *w.out, ws, tap, ("inner_mha_cls", "inner_mha_cls.out_proj"), sp)
        _mlp(w, rows, ws, tap, sp)
    state.position += n


def run_block(model: nn.Module, index: int, residual: torch.Tensor, state: BlockState, *,
              dtype: torch.dtype | None = None, chunk_size: int | None = None,
              advance: bool = True, weights: BlockWeights | None = None,
              workspace: Workspace | None = None, tap=_no_tap) -> None:
    """Block `index` on positions state.position .. state.position + n - 1: residual (B, n, H)
    float32, that block's input there, becomes its output in place, and the state moves to the
    end of those positions (the hcl modal state only with `advance`; keys and values grow as
    needed). This is `run`'s step, public so that a caller can continue a sequence from a
    captured state block by block. weights/workspace: reuse them across pieces of one block
    and dtype (built here when None); tap: records a module's output (Tap)."""
    block = model.blocks[index]
    dtype = dtype or model.blocks[0].mlp.l1.weight.dtype
    work = torch.promote_types(dtype, torch.float32)
    B, n = residual.shape[:2]
    w = weights or BlockWeights(block, dtype, work)
    chunk = max(1, min(B * n, chunk_size or DEFAULT_CHUNK))
    ws = workspace or Workspace(model, B, n, chunk, dtype, work)
    with torch.no_grad():
        if block.kind == "attn":
            _attention_piece(w, residual, ws, state, tap)
        else:
            _hyena_piece(w, residual, ws, state, tap, advance)


def _reserve(state: BlockState, length: int) -> None:
    """Room for keys and values of `length` positions (a captured state holds only its own)."""
    if state.keys.shape[2] >= length:
        return
    for name in ("keys", "values"):
        old = getattr(state, name)
        new = old.new_empty(*old.shape[:2], length, old.shape[3])
        new[:, :, :state.position] = old[:, :, :state.position]
        setattr(state, name, new)


def rows_per_pass(config, batch: int, length: int) -> int:
    """Rows `run` takes through the model together: all `batch` where their pieces hold the
    whole length, else as many as do (at least one), so that a batch of windows runs in row
    groups of whole windows rather than every window in pieces, whose carried states and
    split attention calls cost 1-7% more per window here ("evo2_row_groups")."""
    fits = [g for g in range(1, batch + 1) if piece_length(config, g, length) >= length]
    return max(fits, default=1)


def piece_length(config, batch: int, length: int) -> int:
    """Positions per hyena piece: the largest power of two whose work buffers (about 7 H n
    values of 4 bytes per row) fit PIECE_BYTES, at least 1024, at most the input."""
    per_position = 7 * config.hidden_size * 4 * batch
    n = 1 << max(10, (PIECE_BYTES // per_position).bit_length() - 1)
    return max(1, min(length, n))


def _cuts(start: int, stop: int, piece: int, capture_at: set[int]) -> list[int]:
    """Piece boundaries start < ... < stop, every `piece` positions and at each capture."""
    cuts = set(range(start, stop, piece)) | {stop} | capture_at
    return sorted(c for c in cuts if start <= c <= stop)


def _target(layer: str | None, num_layers: int) -> tuple[int, str | None]:
    """(the last block to run, the module inside it to record or None for its output) for a
    layer name; (-1, None) for the embedding, (num_layers, "norm") for the final norm."""
    if layer == "embedding_layer":
        return -1, None
    if layer is None or layer == "norm":
        return num_layers, "norm"
    parts = layer.split(".", 2)
    return int(parts[1]), parts[2] if len(parts) > 2 else None


@torch.no_grad()
def run(model: nn.Module, ids: torch.Tensor, *, layer: str | None = None,
        chunk_size: int | None = None, piece_size: int | None = None,
        dtype: torch.dtype | None = None, start: list[BlockState] | None = None,
        capture_at: int | Sequence[int] | None = None) -> Run:
    """Hidden states of `layer` (a name of model.layers; None: the final norm's output) for ids
    (B, n), float32 (B, n, width), in bounded memory (module docstring).

    start: every block's state at some position p (as captured); ids are then the tokens of
    positions p..p+n-1 and only those are computed. capture_at: positions in (p, p+n] at
    which every block run returns its state (Run.states[position]). chunk_size: rows per
    matmul chunk, whole batch rows together when they fit (default 4096); piece_size:
    positions per hyena piece (default `piece_length`); dtype: the matmul dtype (default: the
    weights')."""
    cfg = model.config
    device = model.embedding_layer.weight.device
    ids = ids.to(device)
    B, n = ids.shape
    dtype = dtype or model.blocks[0].mlp.l1.weight.dtype
    work = torch.promote_types(dtype, torch.float32)
    origin = start[0].position if start else 0
    if start is not None and len(start) != cfg.num_layers:
        raise ValueError(f"start holds {len(start)} states; the model has {cfg.num_layers} blocks")
    captures = {capture_at} if isinstance(capture_at, int) else set(capture_at or ())
    for c in captures:
        if not origin < c <= origin + n:
            raise ValueError(f"capture_at {c} is not in ({origin}, {origin + n}]")
    group = B if piece_size else rows_per_pass(cfg, B, n)
    if group < B:
        return _row_groups(model, ids, group, layer=layer, chunk_size=chunk_size, dtype=dtype,
                           start=start, capture_at=capture_at)
    last, what = _target(layer, cfg.num_layers)
    chunk = max(1, min(B * n, chunk_size or DEFAULT_CHUNK))
    r = torch.empty(B, n, cfg.hidden_size, dtype=torch.float32, device=device)
    for c0 in range(0, n, chunk):
        r[:, c0:c0 + chunk] = model.embedding_layer(ids[:, c0:c0 + chunk])
    states = {c: [] for c in captures} if capture_at is not None else None
    if last < 0:
        return Run(r, states)
    piece = piece_size or piece_length(cfg, B, n)
    cuts = _cuts(origin, origin + n, piece, captures)
    ws = Workspace(model, B, max(b - a for a, b in zip(cuts, cuts[1:])), chunk, dtype, work)
    tap, out = _no_tap, r
    if what is not None and what != "norm":
        out = torch.empty(B, n, model.layer_width(layer), dtype=torch.float32, device=device)
        tap = Tap(what, out, origin)
    for i, block in enumerate(model.blocks[:last + 1]):
        w = BlockWeights(block, dtype, work)
        state = start[i].clone() if start else initial_state(block, B, n, dtype, work)
        block_tap = tap if i == last else _no_tap
        for a, b in zip(cuts, cuts[1:]):
            run_block(model, i, r[:, a - origin:b - origin], state, dtype=dtype,
                      advance=b < cuts[-1] or b in captures, weights=w, workspace=ws,
                      tap=block_tap)
            if b in captures:
                states[b].append(state.clone())
        del w, state
    if what == "norm":
        norm = model.norm.scale.detach().to(work)
        for sp in spans(B, n, chunk, origin):
            rows = r[sp.b0:sp.b1, sp.c0:sp.c0 + sp.c]
            _rms(rows, norm, model.norm.eps, rows)
    return Run(out, states)


def _row_groups(model: nn.Module, ids: torch.Tensor, group: int, *,
                start: list[BlockState] | None, capture_at: int | Sequence[int] | None,
                **opts) -> Run:
    """`run` over the rows of ids `group` at a time (`rows_per_pass`): each group's hidden
    states written into one output, the captured states of the groups joined per position and
    block (`BlockState.cat`)."""
    B = ids.shape[0]
    hidden, states = None, None
    for g0 in range(0, B, group):
        rows = torch.arange(g0, min(B, g0 + group), device=ids.device)
        part = run(model, ids[rows], start=None if start is None else [s.clone(rows)
                                                                       for s in start],
                   capture_at=capture_at, **opts)
        if hidden is None:
            hidden = part.hidden.new_empty(B, *part.hidden.shape[1:])
            states = None if part.states is None else {c: [] for c in part.states}
        hidden[rows] = part.hidden
        for c, blocks in (part.states or {}).items():
            states[c].append(blocks)
    if states is not None:
        states = {c: [BlockState.cat(list(by_block)) for by_block in zip(*groups)]
                  for c, groups in states.items()}
    return Run(hidden, states)


def _logits(model: nn.Module, hidden: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Tied unembedding of hidden rows (..., H) in the matmul dtype, as float32 logits."""
    weight = model.embedding_layer.weight
    dtype = dtype or model.blocks[0].mlp.l1.weight.dtype
    flat = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
    return mm_t(flat, weight.detach().to(dtype)).float().view(*hidden.shape[:-1], -1)


@torch.no_grad()
def next_token_loglik(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, *,
                      chunk_size: int | None = None, dtype: torch.dtype | None = None
                      ) -> torch.Tensor:
    """log p(x_t | x_<t), t = 1..L-1 (B, L-1) float32, from the final norm's output (B, L, H):
    logits chunk by chunk over positions, log-softmax over the full vocabulary."""
    B, L, _ = hidden.shape
    ids = ids.to(hidden.device)
    chunk = max(1, chunk_size or DEFAULT_CHUNK)
    out = torch.empty(B, max(L - 1, 0), dtype=torch.float32, device=hidden.device)
    for c0 in range(0, L - 1, chunk):
        c1 = min(L - 1, c0 + chunk)
        logp = torch.log_softmax(_logits(model, hidden[:, c0:c1], dtype), dim=-1)
        out[:, c0:c1] = logp.gather(-1, ids[:, c0 + 1:c1 + 1, None])[..., 0]
    return out


@torch.no_grad()
def base_log_probs(model: nn.Module, hidden: torch.Tensor, *, chunk_size: int | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """log p(x_t = b | x_<t), t = 1..L-1, b in A, C, G, T (their byte ids' columns of the full
    512-token log-softmax): (B, L-1, 4) float32 from the final norm's output."""
    from genomeconv.models.base import TRACK_BASES

    B, L, _ = hidden.shape
    chunk = max(1, chunk_size or DEFAULT_CHUNK)
    columns = torch.tensor([ord(b) for b in TRACK_BASES], device=hidden.device)
    out = torch.empty(B, max(L - 1, 0), len(columns), dtype=torch.float32, device=hidden.device)
    for c0 in range(0, L - 1, chunk):
        c1 = min(L - 1, c0 + chunk)
        logp = torch.log_softmax(_logits(model, hidden[:, c0:c1], dtype), dim=-1)
        out[:, c0:c1] = logp.index_select(-1, columns)
    return out
