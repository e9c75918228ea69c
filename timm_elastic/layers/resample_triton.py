"""Triton kernels of the default resampling (2x2 average pooling, 2x bilinear or nearest upsampling)
for CUDA tensors: the `cuda` kernels of the ops in `resample.py`, same signatures, same results.

Why not PyTorch's CUDA kernels: `upsample_bilinear2d_backward` zero-fills the gradient and adds four
`atomicAdd`s per element into it, and the upsampling runs apart from the branch sum, so a block reads
and writes its full-size output three times. Here every kernel is a gather, written once per output
element, with no atomics:
- `up2x_add(low, out)`: `out + U(low)` in one pass, U's output cropped to `out`'s size (an odd size
  was rounded up by the pooling);
- its transpose, the gradient of `low`: `g_low[i] = sum_a w_a g[clamp(2i - 1 + a)]`, w = (1/4, 3/4,
  3/4, 1/4) along each axis (16 taps in 2-D; 4 for nearest), taps past the cropped size skipped;
- 2x2 average pooling with ceil_mode (a window over the border averages its valid entries) and its
  transpose, each input pixel taking its window's gradient over the window's size.

Each program handles a 2-D tile of the output in its memory order: rows of channels (N * H * W, C) when
channels_last, image rows (N * C * H, W) when not. The stores are contiguous, the loads coalesce (in
channels_last, whole runs of channels at one pixel), the index divisions run once per row rather than
per element, and inputs are read through their strides. Arithmetic is in float32 (float64 for float64
tensors); results are stored in the tensors' dtype, so autocast's bf16 / fp16 stays bf16 / fp16.
Offsets are 64-bit only for tensors spanning 2^31 elements or more.

Imported on the first CUDA call (a CPU-only install never imports Triton). With `TRITON_INTERPRET=1`
set before the import, the same kernels run on CPU tensors through Triton's interpreter: that is how
the tests check them on machines without a GPU.
"""
import contextlib

import torch
import triton
import triton.language as tl

from .resample import _layout, _like

__all__ = ['avg_down2x', 'avg_down2x_backward', 'up2x_add', 'up2x_backward']

TILE = 1024  # elements per program (TILE // BLOCK_C rows of BLOCK_C): 8 a thread at 4 warps, 16 bytes of bf16
MAX_BLOCK_C = 128
NUM_WARPS = 4
INT32_LIMIT = 2 ** 31  # tensors spanning this many elements or more are indexed in 64 bits


@triton.jit
def _tile(rows, inner, C, H, W, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
          IDX64: tl.constexpr):
    """This program's tile of a dense (N, C, H, W) output viewed as (rows, inner): (N * H * W, C) if
    channels_last, else (N * C * H, W). Returns the elements' offsets, the mask and (n, c, y, x); the
    divisions run once per row, not per element."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if IDX64:
        r = r.to(tl.int64)
    k = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    r, k = r[:, None], k[None, :]
    if CHANNELS_LAST:
        x = r % W
        t = r // W
        y = t % H
        n = t // H
        c = k
    else:
        y = r % H
        t = r // H
        c = t % C
        n = t // C
        x = k
    return r * inner + k, (r < rows) & (k < inner), n, c, y, x


@triton.jit
def _window(i, j, H, W):
    """Valid entries of pooling window (i, j) of an (H, W) input: 4, 2 at an odd border, 1 in the corner."""
    return (1 + (2 * i + 1 < H).to(tl.int32)) * (1 + (2 * j + 1 < W).to(tl.int32))


@triton.jit
def _acc(v, F64: tl.constexpr):
    # one return statement: Triton's compiler (not its interpreter) rejects a function whose returns differ in
    # type, even when a constexpr condition leaves only one of them reachable
    if F64:
        acc = v.to(tl.float64)
    else:
        acc = v.to(tl.float32)
    return acc


@triton.jit
def _avg_down2x_kernel(x_ptr, y_ptr, rows, inner, C, H, W, h, w, sxn, sxc, sxh, sxw,
                       CHANNELS_LAST: tl.constexpr, F64: tl.constexpr, IDX64: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    o, mask, n, c, i, j = _tile(rows, inner, C, h, w, CHANNELS_LAST, BLOCK_R, BLOCK_C, IDX64)
    has_r = 2 * i + 1 < H
    has_c = 2 * j + 1 < W
    p = x_ptr + n * sxn + c * sxc + 2 * i * sxh + 2 * j * sxw
    # summed in PyTorch's order (row by row), divided by the number of valid entries
    v = _acc(tl.load(p, mask=mask), F64)
    v += _acc(tl.load(p + sxw, mask=mask & has_c, other=0.), F64)
    v += _acc(tl.load(p + sxh, mask=mask & has_r, other=0.), F64)
    v += _acc(tl.load(p + sxh + sxw, mask=mask & has_r & has_c, other=0.), F64)
    tl.store(y_ptr + o, (v / _window(i, j, H, W)).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _avg_down2x_backward_kernel(g_ptr, gx_ptr, rows, inner, C, H, W, h, w, sgn, sgc, sgh, sgw,
                                CHANNELS_LAST: tl.constexpr, F64: tl.constexpr, IDX64: tl.constexpr,
                                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    o, mask, n, c, y, x = _tile(rows, inner, C, H, W, CHANNELS_LAST, BLOCK_R, BLOCK_C, IDX64)
    i = y // 2
    j = x // 2
    v = _acc(tl.load(g_ptr + n * sgn + c * sgc + i * sgh + j * sgw, mask=mask), F64)
    tl.store(gx_ptr + o, (v / _window(i, j, H, W)).to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _up2x_add_kernel(low_ptr, out_ptr, res_ptr, rows, inner, C, H, W, h, w, sln, slc, slh, slw,
                     BILINEAR: tl.constexpr, CHANNELS_LAST: tl.constexpr, F64: tl.constexpr,
                     IDX64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # `out` is dense in the result's layout: read at the result's own offsets
    o, mask, n, c, y, x = _tile(rows, inner, C, H, W, CHANNELS_LAST, BLOCK_R, BLOCK_C, IDX64)
    i = y // 2
    j = x // 2
    base = low_ptr + n * sln + c * slc
    up = _acc(tl.load(base + i * slh + j * slw, mask=mask), F64)
    if BILINEAR:
        # align_corners=False: output y sits at y / 2 - 1 / 4 in the input, so it takes 3/4 of row i and
        # 1/4 of its neighbour, row i - 1 for even y and i + 1 for odd y, clamped at the border
        ri = tl.where(y % 2 == 0, tl.maximum(i - 1, 0), tl.minimum(i + 1, h - 1))
        cj = tl.where(x % 2 == 0, tl.maximum(j - 1, 0), tl.minimum(j + 1, w - 1))
        b = _acc(tl.load(base + i * slh + cj * slw, mask=mask), F64)
        c_ = _acc(tl.load(base + ri * slh + j * slw, mask=mask), F64)
        d = _acc(tl.load(base + ri * slh + cj * slw, mask=mask), F64)
        up = 0.75 * (0.75 * up + 0.25 * b) + 0.25 * (0.75 * c_ + 0.25 * d)
    v = _acc(tl.load(out_ptr + o, mask=mask), F64) + up
    tl.store(res_ptr + o, v.to(res_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tap(g_row, X, W, w2, sgw, mask):
    """One gradient value at column X (before clamping to [0, 2w - 1]); 0 past the cropped width W."""
    X = tl.minimum(tl.maximum(X, 0), w2 - 1)
    return tl.load(g_row + X * sgw, mask=mask & (X < W), other=0.)


@triton.jit
def _bilinear_row(g_row, j, W, w2, sgw, mask, F64: tl.constexpr):
    """The transpose of bilinear 2x along a row: 1/4, 3/4, 3/4, 1/4 of columns 2j - 1 .. 2j + 2."""
    a = _acc(_tap(g_row, 2 * j - 1, W, w2, sgw, mask), F64)
    b = _acc(_tap(g_row, 2 * j, W, w2, sgw, mask), F64)
    c = _acc(_tap(g_row, 2 * j + 1, W, w2, sgw, mask), F64)
    d = _acc(_tap(g_row, 2 * j + 2, W, w2, sgw, mask), F64)
    return 0.75 * (b + c) + 0.25 * (a + d)


@triton.jit
def _row(g_ptr, Y, H, h2, sgh, mask):
    """Row Y (before clamping to [0, 2h - 1]) and whether it lies inside the cropped height H."""
    Y = tl.minimum(tl.maximum(Y, 0), h2 - 1)
    return g_ptr + Y * sgh, mask & (Y < H)


@triton.jit
def _up2x_backward_kernel(g_ptr, gl_ptr, rows, inner, C, H, W, h, w, sgn, sgc, sgh, sgw,
                          BILINEAR: tl.constexpr, CHANNELS_LAST: tl.constexpr, F64: tl.constexpr,
                          IDX64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    o, mask, n, c, i, j = _tile(rows, inner, C, h, w, CHANNELS_LAST, BLOCK_R, BLOCK_C, IDX64)
    base = g_ptr + n * sgn + c * sgc
    if BILINEAR:
        r0, m0 = _row(base, 2 * i - 1, H, 2 * h, sgh, mask)
        r1, m1 = _row(base, 2 * i, H, 2 * h, sgh, mask)
        r2, m2 = _row(base, 2 * i + 1, H, 2 * h, sgh, mask)
        r3, m3 = _row(base, 2 * i + 2, H, 2 * h, sgh, mask)
        v = 0.75 * (_bilinear_row(r1, j, W, 2 * w, sgw, m1, F64) + _bilinear_row(r2, j, W, 2 * w, sgw, m2, F64)) \
            + 0.25 * (_bilinear_row(r0, j, W, 2 * w, sgw, m0, F64) + _bilinear_row(r3, j, W, 2 * w, sgw, m3, F64))
    else:
        r0, m0 = _row(base, 2 * i, H, 2 * h, sgh, mask)
        r1, m1 = _row(base, 2 * i + 1, H, 2 * h, sgh, mask)
        v = _acc(_tap(r0, 2 * j, W, 2 * w, sgw, m0), F64) + _acc(_tap(r0, 2 * j + 1, W, 2 * w, sgw, m0), F64) \
            + _acc(_tap(r1, 2 * j, W, 2 * w, sgw, m1), F64) + _acc(_tap(r1, 2 * j + 1, W, 2 * w, sgw, m1), F64)
    tl.store(gl_ptr + o, v.to(gl_ptr.dtype.element_ty), mask=mask)


# ---- launchers: the ops' cuda kernels ----

def _extent(t: torch.Tensor) -> int:
    """Elements spanned by `t` in its storage (its strides may skip some): its size where it is dense."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t.numel()
    return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)


def _needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether an offset into one of `tensors` may not fit in 32 bits."""
    return any(_extent(t) >= INT32_LIMIT for t in tensors)


def _launch(kernel, tensors, result: torch.Tensor, *args, **constexprs) -> torch.Tensor:
    """Run `kernel(*tensors, result, rows, inner, *args)` over `result` (dense, NCHW or NHWC) in 2-D
    tiles: (N * H * W, C), rows of channels, if channels_last; (N * C * H, W), image rows, if not."""
    if result.numel() == 0:
        return result
    n, c, h, w = result.shape
    channels_last = _layout(result) == torch.channels_last
    rows, inner = (n * h * w, c) if channels_last else (n * c * h, w)
    # (plain integer arithmetic: Triton's `next_power_of_2` and `cdiv` cost the host a microsecond a call)
    block_c = min(1 << (inner - 1).bit_length(), MAX_BLOCK_C)
    idx64 = _needs_int64(result, *tensors)
    grid = (-(-rows // (TILE // block_c)), -(-inner // block_c))
    with torch.cuda.device(result.device) if result.is_cuda else contextlib.nullcontext():
        _run(kernel, grid, (*tensors, result, rows, inner, *args), dict(
            CHANNELS_LAST=channels_last, F64=result.dtype == torch.float64, IDX64=idx64, BLOCK_R=TILE // block_c,
            BLOCK_C=block_c, num_warps=NUM_WARPS, **constexprs))
    return result


def _run(kernel, grid, args, meta) -> None:
    """Launch `kernel` (the one place that does; tests/triton_compile.py records the launches here to compile
    them for a GPU where there is none)."""
    kernel[grid](*args, **meta)


def avg_down2x(x: torch.Tensor) -> torch.Tensor:
    n, c, H, W = x.shape
    y = _like(x, (n, c, (H + 1) // 2, (W + 1) // 2))
    return _launch(_avg_down2x_kernel, (x,), y, c, H, W, *y.shape[-2:], *x.stride())


def avg_down2x_backward(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    n, c, h, w = grad.shape
    gx = _like(grad, (n, c, height, width))
    return _launch(_avg_down2x_backward_kernel, (grad,), gx, c, height, width, h, w, *grad.stride())


def up2x_add(low: torch.Tensor, out: torch.Tensor, mode: str) -> torch.Tensor:
    res = _like(out, out.shape, torch.result_type(out, low))
    out = out.contiguous(memory_format=_layout(out))
    n, c, H, W = out.shape
    return _launch(_up2x_add_kernel, (low, out), res, c, H, W, *low.shape[-2:], *low.stride(),
                   BILINEAR=mode == 'bilinear')


def up2x_backward(grad: torch.Tensor, mode: str, height: int, width: int) -> torch.Tensor:
    n, c, H, W = grad.shape
    gl = _like(grad, (n, c, height, width))
    return _launch(_up2x_backward_kernel, (grad,), gl, c, H, W, height, width, *grad.stride(),
                   BILINEAR=mode == 'bilinear')
