"""Megabase HyenaDNA inference in bounded memory and per-base log-likelihoods.

`hidden_states` gives the same numbers as `model(ids)` (within float32 rounding) without ever
holding a (B, L, 3 d) or (B, L, d_inner) tensor. Per layer, piece by piece along the sequence
(one piece unless it is longer than max_seq_len + 2 pieces), it makes three passes:

1. along the piece in tiles (`_tiles`: several whole rows where rows are short, else chunks of
   one row, so a tile is one (tokens, d) matrix for every matmul): LN1, the x1/v rows of
   in_proj computed channel-major (d, tokens) so no transposition is ever copied, the causal
   short conv along those rows (carrying the last `short_filter_order - 1` inputs across
   chunks and pieces), v' = x1 * v written straight into the (B, d, positions) convolution
   buffer after the v' history of the pieces before (the filter's length minus one);
2. the long convolution of the piece's outputs over all rows and channels at once
   (`fftconv(..., history=)`: only those outputs are computed), channel group by channel
   group (filter taps for `min(L, max_seq_len)` positions: a partial convolution past the
   trained length), in place for a single piece, else into the buffer positions that no later
   piece reads;
3. along the piece in tiles again: the x0 rows of in_proj and their short conv (recomputed
   rather than stored), out_proj(x0 * y) and the MLP accumulated into the float32 residual in
   place (addmm into the residual, GELU in place);

then the last max_seq_len - 1 positions of v' move to the front of the buffer for the next
piece. Streaming costs a recomputation of the filter taps per piece and one copy of the
history, and bounds v' by max_seq_len + piece positions instead of L. Measured here with the
large-1m shape at 4 Mbp (pieces of 2^20), it was also faster than one 4 Mbp transform per
channel: 4 transforms of 2 M points cost less than one of 5 M.

`shared_prefix_loglik` runs windows that repeat another's start (a variant's ALT and REF
windows) the same way, the repeating rows only from their first difference on, beside their
parents (`_suffix_layer`).

Every buffer is allocated once per call (`_Workspace`) and written with out=: a fresh tensor
above glibc's mmap threshold costs a page fault per 4 KiB each time, which measured here made
an elementwise pass several times slower than the pass itself.
Memory is the float32 residual (B L d 4 bytes), the v' buffer (B d min(L, max_seq_len +
piece) float32 elements, float64 for float64 matmuls), one channel group's filter and
convolution output (~GROUP_BYTES) and chunk-sized buffers.
`dtype=torch.bfloat16` (or float16) runs only the block matmuls (in_proj, out_proj, fc1,
fc2) in that dtype; everything else (LayerNorms, the short conv, the gates, v', the long
convolution, the residual stream, the filter) runs in float32 on the same float32 buffers as
the float32 path, so it costs what it costs there. The casts sit at the matmuls' edges: into
a low-precision input buffer before each matmul, out of its low-precision output into a float32
buffer after it (preallocated, `_Workspace`); GELU runs in place on fc1's low-precision output
(torch computes it in float32 inside the kernel, no extra pass) because fc2 reads it there.
For bfloat16 on a CPU whose oneDNN has it, fc1, out_proj and fc2 are oneDNN linears with the
bias and GELU in the matmul's epilogue (`_linear`): no pass of their own at all.
This pays off only where the dtype's matmuls are native (GPUs; CPUs with AVX512-BF16 or AMX
for bfloat16): on an AVX2-only CPU torch emulates them, several times slower than float32.
"""

from __future__ import annotations

import torch
from torch import nn

from genomeconv.kernels import SpectrumCache, fftconv
from genomeconv.kernels.linear import ONEDNN, onednn_linear
from genomeconv.models.base import TRACK_BASES, Suffixes, pool
from genomeconv.models.tokenizer import VOCAB

# `model` below is a models.hyena.HyenaDNA and `block` one of its Blocks: typed as nn.Module
# because hyena.py imports this module (its LanguageModel methods run these functions).
DEFAULT_CHUNK = 4096
DEFAULT_PIECE = 1 << 20  # positions per piece of the streamed long convolution
GROUP_BYTES = 256 * 2**20  # working-set target for one channel group's long convolution
NO_CACHE = SpectrumCache(max_bytes=0)  # filters are recomputed per call: caching only holds memory


def token_loglik(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[targets]: logits (B, l, V), targets (B, l) -> (B, l) float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets[..., None].to(logp.device)).squeeze(-1)


def next_token_loglik(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """logits (B, L, V) -> log p(x_t | x_<t) for t = 1..L-1, (B, L-1) float32."""
    return token_loglik(logits[:, :-1], input_ids[:, 1:])


def _chunks(length: int, size: int):
    for start in range(0, length, size):
        yield slice(start, min(start + size, length))


def _norm(ln: torch.nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm in the norm's own dtype (as the public code), result cast to `dtype`."""
    return ln(x.to(ln.weight.dtype)).to(dtype)


def _cast(x: torch.Tensor, buf: torch.Tensor | None) -> torch.Tensor:
    """x in buf's dtype: x itself when buf is None or of x's dtype (the float32 path), else x
    copied into buf (x's shape): a low-precision matmul's input or output changing precision,
    in a preallocated buffer."""
    return x if buf is None or buf.dtype == x.dtype else buf.copy_(x)


def _short_conv(x: torch.Tensor, carry: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Causal depthwise conv along the last axis of one tile x (C, R, l) (R rows of l
    positions), given each row's previous K-1 inputs `carry` (C, R, K-1), which it then advances
    to the tile's last K-1 inputs; weight (C, K) with weight[:, K-1] on the current position;
    writes out (C, R, l)."""
    K, l = weight.shape[1], x.shape[-1]
    w = weight[:, None, :]
    torch.addcmul(bias[:, None, None], x, w[..., K - 1:], out=out)
    for j in range(K - 1):
        shift = K - 1 - j  # tap j reads the input `shift` positions back
        n = min(shift, l)
        if l > shift:
            out[..., shift:].addcmul_(x[..., :l - shift], w[..., j:j + 1])
        out[..., :n].addcmul_(carry[..., j:j + n], w[..., j:j + 1])
    if K > 1:
        carry.copy_(torch.cat([carry, x[..., -(K - 1):]], dim=-1)[..., -(K - 1):])
    return out


def _fused_epilogues(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `_linear` runs matmuls in `dtype` as oneDNN linears with the bias (and GELU) in
    the epilogue, on the CPU: float32 where kernels.linear takes oneDNN, bfloat16 where oneDNN
    supports it. fc1 and its GELU then make one pass over memory instead of two
    (benchmarks/results/design_figures.json, "fused_linear_gelu")."""
    if device.type != "cpu":
        return False
    if dtype == torch.float32:
        return ONEDNN
    return (dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            out: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """x @ weight.T + bias, then GELU (tanh) when `gelu`, in the matmul dtype: by addmm into
    out[:len(x)] (GELU in place: for bfloat16 torch computes it in float32 inside the
    kernel), or, with `out` None (`_fused_epilogues`), one oneDNN linear with bias and GELU
    in its epilogue, sparing their passes over memory. That op has no out= form: its output is
    fresh, a block that glibc hands back chunk after chunk (as for the LayerNorm outputs)."""
    if out is None:
        return onednn_linear(x, weight, bias, gelu=gelu)
    y = torch.addmm(bias, x, weight.T, out=out[:len(x)])
    return torch.ops.aten.gelu_(y, approximate="tanh") if gelu else y


def _add_linear(r: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                mm: "_MatmulBuffers | None") -> None:
    """r += x @ weight.T + bias in place (r float32; x, weight, bias in the matmul dtype).
    In r's dtype the matmul accumulates into r, or, for a contiguous x where `_linear` fuses
    epilogues, is one oneDNN linear with the bias, added (fc2: "fused_linear_gelu"; oneDNN
    would copy a transposed x such as out_proj's first); in another dtype (`mm`) its output is
    cast into mm.wide and added."""
    if mm is not None:
        r += mm.wide[:len(r)].copy_(_linear(x, weight, bias, mm.out))
    elif x.is_contiguous() and _fused_epilogues(x.dtype, x.device):
        r += _linear(x, weight, bias, None)
    else:
        torch.addmm(r, x, weight.T, out=r)
        r += bias


class _LayerWeights:
    """One block's matmul weights in the matmul dtype, split into the x0 and (x1, v) parts;
    short conv weights as (channels, K) in the work dtype (the conv runs there)."""

    def __init__(self, block: nn.Module, dtype: torch.dtype, work: torch.dtype):
        mixer, d = block.mixer, block.mixer.d_model
        cast = lambda t, to=dtype: None if t is None else t.detach().to(to)  # noqa: E731
        w_in, b_in = cast(mixer.in_proj.weight), cast(mixer.in_proj.bias)
        w_sf, b_sf = cast(mixer.short_filter.weight, work)[:, 0], cast(mixer.short_filter.bias,
                                                                      work)
        self.in0, self.in12 = (w_in[:d], b_in[:d]), (w_in[d:], b_in[d:])
        self.sf0, self.sf12 = (w_sf[:d], b_sf[:d]), (w_sf[d:], b_sf[d:])
        self.out = (cast(mixer.out_proj.weight), cast(mixer.out_proj.bias))
        self.fc1 = (cast(block.mlp.fc1.weight), cast(block.mlp.fc1.bias))
        self.fc2 = (cast(block.mlp.fc2.weight), cast(block.mlp.fc2.bias))


class _Workspace:
    """Buffers reused by every layer of one `hidden_states` call: fresh tensors above glibc's
    mmap threshold (32 MiB) cost a page fault per 4 KiB on every allocation, several times the
    work done in them. v' of one piece and the history before it (B, d, history + piece; the
    whole sequence when it is one piece), one channel group's convolution output when there
    are several pieces (else v' is convolved in place), the short convs' carries (channels, B,
    K-1), tile buffers of `chunk` tokens (`_tiles`), and the filter features, taps and decay
    window of one channel group.

    `work` is the dtype of everything but the matmuls: float32 (float64 for float64 matmuls).
    With matmuls in another dtype than the float32 residual's, `mm` holds their inputs and
    outputs in that dtype (None for float32). fc1's output (`hidden`) is in the matmul dtype: GELU
    runs in place there and fc2 reads it; with fused epilogues (`_fused_epilogues`) oneDNN
    returns it and `hidden` is None."""

    def __init__(self, model: nn.Module, B: int, L: int, chunk: int, piece: int,
                 dtype: torch.dtype):
        cfg, device = model.config, model.backbone.ln_f.weight.device
        d, K = cfg.d_model, cfg.short_filter_order
        self.rows, self.positions = B, L
        self.chunk = min(chunk, B * L)  # tokens per tile
        self.length = min(L, cfg.max_seq_len)
        history = self.length - 1
        streamed = _streamed(cfg, L, piece)
        width = history + piece if streamed else L
        self.pieces = list(_pieces(L, history, piece)) if streamed else [slice(0, L)]
        self.group = max(1, min(d, GROUP_BYTES // (
            (B * (width + piece * streamed) + self.length) * 4)))

        def empty(*shape, dtype=dtype):
            return torch.empty(*shape, dtype=dtype, device=device)

        fdtype = model.backbone.layers[0].mixer.filter_fn.bias.dtype
        self.dtype = dtype
        self.work = work = torch.promote_types(dtype, torch.float32)
        self.v = empty(B, d, width, dtype=work)
        self.y = empty(B, self.group, piece, dtype=work) if streamed else None
        self.proj = empty(2 * d, self.chunk, dtype=work)
        self.conv = empty(2 * d, self.chunk, dtype=work)
        self.carry12 = empty(2 * d, B, K - 1, dtype=work)
        self.carry0 = empty(d, B, K - 1, dtype=work)
        fused = _fused_epilogues(dtype, device)
        self.hidden = None if fused else empty(self.chunk, cfg.d_inner)
        self.mm = (None if dtype == torch.float32 else
                   _MatmulBuffers(d, self.chunk, empty, fused))
        self.features = empty(self.length, cfg.filter_order, dtype=fdtype)
        self.taps = empty(self.group, self.length, dtype=fdtype)
        self.window = empty(self.group, self.length, dtype=fdtype)

    def tiles(self, piece: slice) -> list[tuple[slice, slice]]:
        """(rows, positions within the piece) of each tile of the pointwise passes."""
        return _tiles(self.rows, piece.stop - piece.start, len(self.pieces) == 1, self.chunk)


def _streamed(cfg, L: int, piece: int) -> bool:
    """Whether v' of L positions streams in pieces: where that saves at least a piece of it."""
    return L > min(L, cfg.max_seq_len) - 1 + 2 * piece


def _tiles(B: int, n: int, whole: bool, tokens: int) -> list[tuple[slice, slice]]:
    """Tiles of at most `tokens` tokens over B rows of n positions, each contiguous in a (B, n,
    d) residual, so that a tile is one (tokens, d) matrix for the matmuls: several whole rows
    per tile where rows are whole (`whole`, one piece) and short, else one row in chunks."""
    if whole and n <= tokens:
        per = max(1, tokens // max(1, n))
        return [(slice(b, min(b + per, B)), slice(0, n)) for b in range(0, B, per)]
    return [(slice(b, b + 1), s) for b in range(B) for s in _chunks(n, tokens)]


class _MatmulBuffers:
    """Chunk buffers in the matmul dtype where it is not the residual's float32: `norm`
    (chunk, d) a LayerNorm's output, `proj` (2 d, chunk) in_proj's output (channel-major, as
    `_Workspace.proj`), `gated` (d, chunk) x0 * y, `out` (chunk, d) out_proj's or fc2's output
    (None with fused epilogues: `_linear` returns it), and `wide` (chunk, d, float32) that
    output cast for the residual. For float64 matmuls (work dtype float64 too) the first three
    are never written: `_cast` finds the dtypes equal."""

    def __init__(self, d: int, chunk: int, empty, fused: bool):
        self.norm, self.proj = empty(chunk, d), empty(2 * d, chunk)
        self.gated, self.out = empty(d, chunk), None if fused else empty(chunk, d)
        self.wide = empty(chunk, d, dtype=torch.float32)


def _pieces(L: int, history: int, size: int) -> list[slice]:
    """Pieces of at most `size` positions over 0 .. L, cut at `history` too: before it every
    position stays history, after it each piece frees as many history positions as it adds
    (see `_layer`)."""
    return [slice(start, min(start + size, hi)) for lo, hi in ((0, min(history, L)), (history, L))
            for start in range(lo, hi, size)]


def _shift_left(buf: torch.Tensor, start: int, count: int) -> None:
    """buf[..., :count] = buf[..., start:start + count] where the ranges may overlap: copies
    of at most `start` positions, in increasing order, each reading positions not yet
    overwritten."""
    for i in range(0, count, start):
        j = min(i + start, count)
        buf[..., i:j].copy_(buf[..., start + i:start + j])


def _layer(block: nn.Module, residual: torch.Tensor, ws: _Workspace) -> None:
    """Apply one block to the float32 residual (B, L, d) in place, in bounded memory.

    Piece by piece along the sequence (one piece unless the sequence is far longer than the
    filter): v' for the piece (`_gate_inputs`), the long convolution of the piece's outputs
    from v' of the piece and the filter-length history before it, then out_proj and the MLP
    into the residual at the piece's positions (`_mix_outputs`).

    With a low-precision matmul dtype (`ws.mm`), each matmul reads its input from a `_cast`
    into a matmul-dtype buffer and writes its output there; `_cast` back into the work buffer
    that the float32 path's matmul writes directly, so the work in between is the float32
    path's. On the float32 path `mm` is None, `(mm or ws).proj` is `ws.proj` and every `_cast`
    returns its input."""
    d, L = block.mixer.d_model, residual.shape[1]
    w = _LayerWeights(block, ws.dtype, ws.work)
    filt = block.mixer.filter_fn
    feats = filt.features(ws.length, ws.features)
    ws.carry12.zero_()
    ws.carry0.zero_()
    held = 0  # positions of v' history before the piece in ws.v
    for p in ws.pieces:
        n = p.stop - p.start
        vbuf = ws.v[..., :held + n]
        _gate_inputs(block, w, residual, ws, p, vbuf[..., held:])

        # the history kept for the next piece is the last `keep` positions of vbuf; the conv
        # output goes where no kept position is: the freed front (a piece past the cut in
        # `_pieces`) or just after vbuf (one before it); a single piece convolves in place
        keep = min(p.stop, ws.length - 1)
        free = held + n - keep
        at = 0 if free >= n else held + n

        def convolve(ch: slice, k: torch.Tensor) -> None:
            if ws.y is None:
                fftconv(vbuf[:, ch], k, filt.bias[ch], cache=NO_CACHE, out=vbuf[:, ch])
            else:
                yg = ws.y[:, :ch.stop - ch.start, :n]
                fftconv(vbuf[:, ch], k, filt.bias[ch], cache=NO_CACHE, history=held, out=yg)
                ws.v[:, ch, at:at + n].copy_(yg)

        _by_channel_group(filt, feats, ws, d, convolve)
        _mix_outputs(block, w, residual, ws, p, vbuf if ws.y is None else ws.v[..., at:at + n])
        if free > 0 and p.stop < L:
            _shift_left(ws.v, free, keep)
        held = keep


def _gate_inputs(block: nn.Module, w: _LayerWeights, residual: torch.Tensor, ws: _Workspace,
                 p: slice, v: torch.Tensor) -> None:
    """Pass 1 over piece p, tile by tile: LN1, the x1/v rows of in_proj computed channel-major
    (2 d, tokens), so that the short conv and the gate run along contiguous rows and v' = x1 v
    lands in v (B, d, piece positions) without a transposition."""
    d, mm = block.mixer.d_model, ws.mm
    for rows, s in ws.tiles(p):
        r = residual[rows, p.start + s.start:p.start + s.stop]
        R, l, m = r.shape[0], r.shape[1], r.shape[0] * r.shape[1]
        a = _cast(_norm(block.norm1, r, ws.work).view(m, d), mm and mm.norm[:m])
        x = torch.addmm(w.in12[1][:, None], w.in12[0], a.T, out=(mm or ws).proj[:, :m])
        z = _short_conv(_cast(x, ws.proj[:, :m]).view(2 * d, R, l), ws.carry12[:, rows],
                        *w.sf12, out=ws.conv[:, :m].view(2 * d, R, l))
        torch.mul(z[:d], z[d:], out=v[rows, :, s].transpose(0, 1))


def _mix_outputs(block: nn.Module, w: _LayerWeights, residual: torch.Tensor, ws: _Workspace,
                 p: slice, y: torch.Tensor) -> None:
    """Pass 3 over piece p, tile by tile: the x0 rows of in_proj and their short conv
    (recomputed rather than stored), out_proj(x0 * y) and the MLP added into the residual in
    place; y (B, d, piece positions) is the long convolution's output."""
    d, mm = block.mixer.d_model, ws.mm
    for rows, s in ws.tiles(p):
        r = residual[rows, p.start + s.start:p.start + s.stop]
        R, l, m = r.shape[0], r.shape[1], r.shape[0] * r.shape[1]
        flat = r.view(m, d)
        a = _cast(_norm(block.norm1, r, ws.work).view(m, d), mm and mm.norm[:m])
        x0 = torch.addmm(w.in0[1][:, None], w.in0[0], a.T, out=(mm or ws).proj[:d, :m])
        gated = ws.conv[:d, :m]
        _short_conv(_cast(x0, ws.proj[:d, :m]).view(d, R, l), ws.carry0[:, rows], *w.sf0,
                    out=gated.view(d, R, l)).mul_(y[rows, :, s].transpose(0, 1))
        _add_linear(flat, _cast(gated, mm and mm.gated[:, :m]).T, *w.out, mm)
        a = _cast(_norm(block.norm2, r, ws.work).view(m, d), mm and mm.norm[:m])
        _add_linear(flat, _linear(a, *w.fc1, ws.hidden, gelu=True), *w.fc2, mm)


def _by_channel_group(filt: nn.Module, feats: torch.Tensor, ws: _Workspace, d: int,
                      convolve) -> None:
    """The filter taps of each channel group (ws.group channels, ws.length taps), handed to
    `convolve(channels, taps)`: a group's taps and convolution stay within GROUP_BYTES."""
    for c in range(0, d, ws.group):
        ch = slice(c, min(c + ws.group, d))
        convolve(ch, filt.filter(ws.length, ch, feats, out=ws.taps[:ch.stop - c],
                                 scratch=ws.window[:ch.stop - c]))


def _embed(model: nn.Module, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """The float32 residual stream's start (B, L, d): the token embeddings, tile by tile."""
    B, L = ids.shape
    residual = torch.empty(B, L, model.d_model, dtype=torch.float32, device=ids.device)
    for rows, s in _tiles(B, L, True, chunk):
        residual[rows, s] = model.backbone.embeddings.word_embeddings(ids[rows, s]).float()
    return residual


def _final_norm(model: nn.Module, residual: torch.Tensor, chunk: int) -> torch.Tensor:
    """ln_f applied to the residual (B, L, d) in place, tile by tile; returns it."""
    for rows, s in _tiles(*residual.shape[:2], True, chunk):
        residual[rows, s] = _norm(model.backbone.ln_f, residual[rows, s], torch.float32)
    return residual


def _next_token_loglik(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor,
                       chunk: int) -> torch.Tensor:
    """log p(x_t | x_<t) for t = 1..L-1, (B, L-1) float32, from the final hidden states
    (B, L, d), logits made tile by tile."""
    B, L = ids.shape
    loglik = torch.empty(B, max(L - 1, 0), dtype=torch.float32, device=hidden.device)
    for rows, s in _tiles(B, L - 1, True, chunk):
        logits = model.lm_head(hidden[rows, s].to(model.lm_head.weight.dtype))
        loglik[rows, s] = token_loglik(logits, ids[rows, s.start + 1:s.stop + 1])
    return loglik


@torch.no_grad()
def hidden_states(model: nn.Module, ids: torch.Tensor, *, chunk_size: int | None = None,
                  piece_size: int | None = None, dtype: torch.dtype | None = None,
                  blocks: int | None = None) -> torch.Tensor:
    """Hidden states after ln_f, (B, L, d_model) float32, equal to `model(ids)` within float32
    rounding (with `blocks`, the residual stream after the first `blocks` blocks instead), in
    memory ~ B L d 4 bytes (the residual) plus B d min(L, max_seq_len + piece) 4 bytes (v', 8
    for float64) plus channel-group and tile-sized temporaries.

    chunk_size: tokens per tile of the pointwise passes (default 4096; several short rows or a
    chunk of one long row, `_tiles`); piece_size: positions per piece of the streamed long
    convolution for sequences longer than max_seq_len + 2 pieces (default 2^20); dtype: compute
    dtype of the block matmuls (default: the model's parameter dtype); below float32
    everything else still runs in float32 (module docstring).
    """
    ids = ids.to(model.backbone.ln_f.weight.device)
    dtype = dtype or model.backbone.ln_f.weight.dtype
    chunk = max(1, chunk_size or DEFAULT_CHUNK)
    residual = _embed(model, ids, chunk)
    ws = _Workspace(model, *ids.shape, chunk, max(1, piece_size or DEFAULT_PIECE), dtype)
    for block in model.backbone.layers[:blocks]:
        _layer(block, residual, ws)
    del ws
    return residual if blocks is not None else _final_norm(model, residual, chunk)


@torch.no_grad()
def hidden_and_loglik(model: nn.Module, ids: torch.Tensor, **options
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden (B, L, d), log p(x_t | x_<t) (B, L-1)); options as for `hidden_states`."""
    hidden = hidden_states(model, ids, **options)
    chunk = max(1, options.get("chunk_size") or DEFAULT_CHUNK)
    return hidden, _next_token_loglik(model, hidden, ids.to(hidden.device), chunk)


@torch.no_grad()
def shared_prefix_loglik(model: nn.Module, ids: torch.Tensor, plan: Suffixes, *,
                         pooled: bool = False, chunk_size: int | None = None,
                         dtype: torch.dtype | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`LanguageModel.log_likelihoods_shared` for HyenaDNA: the full rows of `plan` as in
    `hidden_states`, and beside them, layer by layer, the shared rows from their `first`
    position on (`_suffix_layer`), packed (plan.packed). plan: Suffixes.plan with context
    short_filter_order - 1. Windows that would stream (longer than max_seq_len + 2 pieces)
    run in full."""
    device = model.backbone.ln_f.weight.device
    ids = ids.to(device)
    dtype = dtype or model.backbone.ln_f.weight.dtype
    chunk = max(1, chunk_size or DEFAULT_CHUNK)
    full, packed = ids[plan.full.to(device)], plan.packed(ids)
    if not len(packed) or _streamed(model.config, plan.L, DEFAULT_PIECE):
        hidden, loglik = hidden_and_loglik(model, ids, chunk_size=chunk, dtype=dtype)
        return loglik, pool(hidden.double(), "mean") if pooled else None
    res_f, res_s = _embed(model, full, chunk), _embed(model, packed, chunk)
    ws_f = _Workspace(model, *full.shape, chunk, DEFAULT_PIECE, dtype)
    ws_s = _Workspace(model, *packed.shape, chunk, DEFAULT_PIECE, dtype)
    at = _SuffixIndex(plan)
    for block in model.backbone.layers:
        _suffix_layer(block, res_f, ws_f, res_s, ws_s, at)
    at.refresh(res_s, res_f)
    del ws_f, ws_s
    hidden_f, hidden_s = _final_norm(model, res_f, chunk), _final_norm(model, res_s, chunk)
    loglik = plan.loglik(_next_token_loglik(model, hidden_f, full, chunk),
                         _next_token_loglik(model, hidden_s, packed, chunk))
    return loglik, plan.pooled(hidden_f, hidden_s) if pooled else None


class _SuffixIndex:
    """Where a shared row's packed positions read their parent's values (plan: Suffixes):
    `refresh` copies the parent's residual into the positions first .. start-1 (identical to
    the parent's at every layer's input, being before start); `add_parents` adds a multiple
    of a channel-major (F, d, L) buffer of the full rows at each packed row's real positions,
    one slice per run of rows with the same parent and first position (plan's order: a few
    runs per family); `before` marks the packed positions before start."""

    def __init__(self, plan: Suffixes):
        pos = plan.positions()
        j = torch.arange(pos.shape[1], device=pos.device)
        self.before = j < (plan.start - plan.first)[:, None]  # (S, W)
        rows, cols = self.before.nonzero(as_tuple=True)
        self.head = (rows, cols, plan.parent[rows], pos[rows, cols])
        key = torch.stack([plan.parent, plan.first], dim=1)
        runs, counts = torch.unique_consecutive(key, dim=0, return_counts=True)
        ends = counts.cumsum(0).tolist()
        self.runs = [(r1 - n, r1, parent, first) for r1, n, (parent, first)
                     in zip(ends, counts.tolist(), runs.tolist())]

    def refresh(self, packed: torch.Tensor, full: torch.Tensor) -> None:
        """packed (S, W, d) at the positions before start := full (F, L, d) there."""
        rows, cols, parent, pos = self.head
        packed[rows, cols] = full[parent, pos]

    def add_parents(self, packed: torch.Tensor, full: torch.Tensor, alpha: float) -> None:
        """packed (S, d, W) += alpha * full (F, d, L) at each packed row's real positions."""
        L = full.shape[-1]
        for r0, r1, parent, first in self.runs:
            packed[r0:r1, :, :L - first].add_(full[parent, None, :, first:], alpha=alpha)


def _suffix_layer(block: nn.Module, res_f: torch.Tensor, ws_f: _Workspace,
                  res_s: torch.Tensor, ws_s: _Workspace, at: _SuffixIndex) -> None:
    """One block over the full rows (res_f, one piece) and the packed shared rows (res_s),
    in place. The shared rows' positions before start are their parents' (`refresh`); their
    v' minus the parent's, zero before start, convolved with the same filter and added to the
    parent's convolution output, is their own convolution output (linearity: the difference
    is zero before start, so only the packed positions need it); the rest is pointwise."""
    d = block.mixer.d_model
    w = _LayerWeights(block, ws_f.dtype, ws_f.work)
    filt = block.mixer.filter_fn
    at.refresh(res_s, res_f)
    for res, ws in ((res_f, ws_f), (res_s, ws_s)):
        ws.carry12.zero_()
        ws.carry0.zero_()
        _gate_inputs(block, w, res, ws, ws.pieces[0], ws.v)
    at.add_parents(ws_s.v, ws_f.v, -1)
    ws_s.v.masked_fill_(at.before[:, None, :], 0)

    def convolve(ch: slice, k: torch.Tensor) -> None:
        for v in (ws_f.v, ws_s.v):
            fftconv(v[:, ch], k, filt.bias[ch], cache=NO_CACHE, out=v[:, ch])

    _by_channel_group(filt, filt.features(ws_f.length, ws_f.features), ws_f, d, convolve)
    at.add_parents(ws_s.v, ws_f.v, 1)
    for res, ws in ((res_f, ws_f), (res_s, ws_s)):
        _mix_outputs(block, w, res, ws, ws.pieces[0], ws.v)


@torch.no_grad()
def base_log_probs(model: nn.Module, ids: torch.Tensor, **options) -> torch.Tensor:
    """log p(x_t = b | x_<t) for t = 1..L-1 and b in A, C, G, T: (B, L-1, 4) float32 from the
    full log-softmax over the vocabulary; options as for `hidden_states`. Logits are made chunk
    by chunk, so memory is the hidden states plus one chunk's (B, chunk, vocab) logits."""
    hidden = hidden_states(model, ids, **options)
    B, L, _ = hidden.shape
    chunk = max(1, options.get("chunk_size") or DEFAULT_CHUNK)
    columns = torch.tensor([VOCAB[b] for b in TRACK_BASES], device=hidden.device)
    out = torch.empty(B, max(L - 1, 0), len(TRACK_BASES), dtype=torch.float32,
                      device=hidden.device)
    for rows, s in _tiles(B, L - 1, True, chunk):
        logits = model.lm_head(hidden[rows, s].to(model.lm_head.weight.dtype))
        out[rows, s] = torch.log_softmax(logits.float(), dim=-1).index_select(-1, columns)
    return out
