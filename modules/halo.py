"""Blocked local self-attention with a halo (HaloNet), with masked padding for any H×W."""

from __future__ import annotations

import torch
from torch import nn

from ._common import DEFAULT_HEAD_DIM, check_channels, check_non_negative, check_positive, resolve_heads
from .registry import register


def ceil_div(n: int, d: int) -> int:
    """⌈n / d⌉ for n >= 0, d > 0, written without negative operands.

    Under ``torch.onnx`` tracing a tensor's sizes are traced values, so this arithmetic is recorded in
    the graph, and torch's exporter writes integer ``//`` as ONNX Div, which truncates toward zero:
    the usual ``-(-n // d)`` becomes ``⌊n / d⌋`` there (2 blocks instead of 3 for n = 20, d = 8).
    ``(n + d - 1) // d`` has no negative operand, so it means the same eagerly and in ONNX.

    Args:
        n: the dividend (a size), >= 0.
        d: the divisor, > 0.
    """
    return (n + d - 1) // d


def halo_geometry(
    h: int, w: int, block: int, halo: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token indices and key validity for blocked attention on an ``h``×``w`` map (raster order).

    The map is cut into ⌈h/block⌉×⌈w/block⌉ blocks; block (by, bx) holds the queries at rows
    ``by·block + [0, block)`` and cols ``bx·block + [0, block)``, and sees the keys in the window grown
    by ``halo`` on every side (``win = block + 2·halo`` rows and cols). Positions outside the map
    (bottom/right padding of the blocks, the halo beyond the border) are clamped to the nearest
    pixel so that every index is valid; the masks say which window rows/cols really are in the map.
    Since the window is a rectangle, a key is valid iff its row and its column are.

    Returns:
        q_index: (blocks·block²,) token index of each query slot, blocks in raster order.
        kv_index: (blocks·win²,) token index of each window slot.
        row_valid: (⌈h/block⌉, win) bool, window row inside the map.
        col_valid: (⌈w/block⌉, win) bool, window column inside the map.
    """
    nby, nbx, win = ceil_div(h, block), ceil_div(w, block), block + 2 * halo

    def axis(size: int, blocks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        starts = torch.arange(blocks, device=device)[:, None] * block
        keys = starts - halo + torch.arange(win, device=device)  # blocks × win
        queries = (starts + torch.arange(block, device=device)).clamp(max=size - 1)  # blocks × block
        return queries, keys.clamp(0, size - 1), (keys >= 0) & (keys < size)

    qy, ky, row_valid = axis(h, nby)
    qx, kx, col_valid = axis(w, nbx)
    q_index = (qy[:, None, :, None] * w + qx[None, :, None, :]).reshape(-1)
    kv_index = (ky[:, None, :, None] * w + kx[None, :, None, :]).reshape(-1)
    return q_index, kv_index, row_valid, col_valid


@register("halo")
class HaloAttention(nn.Module):
    """Blocked local self-attention with a halo (HaloNet).

    Vaswani, Ramachandran, Srinivas, Parmar, Hechtman, Shlens: "Scaling Local Self-Attention for
    Parameter Efficient Visual Backbones", CVPR 2021.

    Queries are grouped in non-overlapping ``b×b`` blocks; each block attends to the keys/values in
    its block grown by a halo of ``h`` pixels on every side, a ``win×win`` window (``win = b + 2h``).
    Per head, ``logit(i, j) = scale·q_i·k_j + q_i·r_h[Δy] + q_i·r_w[Δx]`` with learned relative-position
    tables per axis indexed by the key-minus-query offset (Δ ∈ [-(b+h-1), b+h-1], so ``2(b+h)-1`` rows;
    timm's tables have ``2·win-1`` rows of which the first ``2h`` are never used), softmax over the
    window, weighted sum of v, and a 1×1 output projection (timm's ``HaloAttn`` has none). q, k and v
    come from 1×1 projections; the position term is not scaled (timm's default).

    Any H×W works: blocks are padded at the bottom/right to a multiple of ``b``, and every key that is
    not a pixel of the map (that padding and the halo beyond the border) is masked out of the softmax
    (timm does not mask its zero-padded halo); padded slots are filled by gathering the nearest pixel,
    which the mask then removes, so no padded copy of the map is made. Every window holds at least
    one real pixel, so no row of the softmax is empty. In float16 / bfloat16 (autocast or a half
    model) the logits, softmax and weighted sum run in float32: fp16 logits overflow at 65504, and
    bf16 logits lose the precision that the softmax of large logits needs; the projections stay in
    the low precision.

    Cost: O(N·C²) for the projections plus O(N·win²·C) for the attention (linear in N = H·W for fixed
    b, h); the logits take N·win²·heads memory and the gathered k/v windows ≈ (win/b)²·2·N·C.

    Args:
        channels (int): input and output channels C.
        num_heads (int | None): heads; must divide C. Default: derived from ``head_dim``.
        head_dim (int): channels per head used to derive ``num_heads``. Default: 32.
        block_size (int): query block side b (> 0). Default: 8.
        halo_size (int): halo h added to each side of the block for keys/values (>= 0). Default: 3.
        qkv_bias (bool): bias in the q and k/v projections (timm's default is False; True here as in
            the project's other modules). Default: True.

    Example:
        >>> m = HaloAttention(64)
        >>> m(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 64, 20, 20])
    """

    def __init__(
        self,
        channels: int,
        num_heads: int | None = None,
        head_dim: int = DEFAULT_HEAD_DIM,
        block_size: int = 8,
        halo_size: int = 3,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)
        self.num_heads = resolve_heads(channels, num_heads, head_dim)
        self.block_size = check_positive("block_size", block_size)
        self.halo_size = check_non_negative("halo_size", halo_size)
        self.head_dim = channels // self.num_heads
        self.win_size = block_size + 2 * halo_size
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(channels, channels, bias=qkv_bias)
        self.kv = nn.Linear(channels, 2 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        rel_size = 2 * (block_size + halo_size) - 1
        self.rel_h = nn.Parameter(torch.empty(rel_size, self.head_dim))
        self.rel_w = nn.Parameter(torch.empty(rel_size, self.head_dim))
        nn.init.trunc_normal_(self.rel_h, std=self.scale)
        nn.init.trunc_normal_(self.rel_w, std=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, c, h, w = x.shape
        b, win, heads, d = self.block_size, self.win_size, self.num_heads, self.head_dim
        nby, nbx = ceil_div(h, b), ceil_div(w, b)
        q_index, kv_index, row_valid, col_valid = halo_geometry(h, w, b, self.halo_size, x.device)

        tokens = x.flatten(2).transpose(1, 2)  # B×N×C
        # Gather the projected tokens into blocks / windows, (B·heads·blocks)×slots×d. Gathering from
        # a head-major view reads d contiguous values per slot and writes the final layout directly.
        q = self.q(tokens).view(bsz, h * w, heads, d).transpose(1, 2)
        q = q.index_select(2, q_index).view(-1, b * b, d)
        kv = self.kv(tokens).view(bsz, h * w, 2, heads, d).permute(2, 0, 3, 1, 4)
        k, v = kv.index_select(3, kv_index).view(2, -1, win * win, d).unbind(0)

        dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = self._attend(q.to(dtype), k.to(dtype), v.to(dtype), row_valid, col_valid)
        # Fold the blocks back to B×H×W×C tokens, crop the padding, project straight to B×C×H×W.
        y = y.to(q.dtype).view(bsz, heads, nby, nbx, b, b, d).permute(0, 2, 4, 3, 5, 1, 6)
        y = y.reshape(bsz, nby * b, nbx * b, c)[:, :h, :w].reshape(bsz, h * w, c)
        out = torch.matmul(self.proj.weight, y.transpose(1, 2))
        return (out + self.proj.bias.to(out.dtype)[:, None]).view(bsz, c, h, w)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        row_valid: torch.Tensor,
        col_valid: torch.Tensor,
    ) -> torch.Tensor:
        """Softmax attention of each block's b² queries over its win² keys; q is (n·blocks)×b²×d."""
        b, win, d = self.block_size, self.win_size, self.head_dim
        nby, nbx = row_valid.shape[0], col_valid.shape[0]
        # Relative-position logits per axis. Query row y and window row t have table row t - y + b - 1
        # (key minus query offset, shifted to start at 0), so query row y reads the win consecutive
        # rows starting at b - 1 - y: a flipped unfold of the table (b×d×win). Each axis is then
        # one batched matmul with win (not 2·(b+h)-1) outputs per query.
        q5 = q.view(-1, b, b, d)
        table_h = self.rel_h.to(q.dtype).unfold(0, win, 1).flip(0)
        table_w = self.rel_w.to(q.dtype).unfold(0, win, 1).flip(0)
        rel_h = torch.einsum("nyxd,ydt->nyxt", q5, table_h)
        rel_w = torch.einsum("nyxd,xdt->nyxt", q5, table_w)
        # Masking: -inf on window rows/cols outside the map masks exactly the keys outside it.
        row_bias = torch.zeros(row_valid.shape, dtype=q.dtype, device=q.device)
        col_bias = torch.zeros(col_valid.shape, dtype=q.dtype, device=q.device)
        row_bias = row_bias.masked_fill(~row_valid, float("-inf")).view(1, nby, 1, 1, win)
        col_bias = col_bias.masked_fill(~col_valid, float("-inf")).view(1, 1, nbx, 1, win)
        rel_h = rel_h.reshape(-1, nby, nbx, b * b, win) + row_bias
        rel_w = rel_w.reshape(-1, nby, nbx, b * b, win) + col_bias
        bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).view(-1, b * b, win * win)
        attn = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=self.scale).softmax(dim=-1)
        return torch.bmm(attn, v)
