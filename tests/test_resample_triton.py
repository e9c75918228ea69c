"""The Triton kernels of the CUDA path (timm_elastic/layers/resample_triton.py) against PyTorch's ops in
float64, for odd and even sizes, 1x1, both layouts and strided inputs; then in float32, bf16 and fp16.

On a GPU they run as the ops' CUDA kernels (through `avg_down2x` / `up2x_add` and their gradients). Without
one, the same kernels run on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1, set by
conftest.py before they are imported), called directly."""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from timm_elastic.layers.resample import avg_down2x, up2x_add

CUDA = torch.cuda.is_available()
INTERPRETED = not CUDA and os.environ.get('TRITON_INTERPRET') == '1'
HAS_TRITON = importlib.util.find_spec('triton') is not None
DEVICE = 'cuda' if CUDA else 'cpu'


if INTERPRETED and HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _copy(src, dst, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(dst + i, tl.load(src + i, mask=i < n), mask=i < n)


def _interpreter_fault() -> str:
    """Why Triton's interpreter cannot be trusted here ('' where it can): it must copy a tensor right. The
    interpreter of Triton 3.0 and 3.1 (torch 2.4's and 2.5's) reads memory wrongly under NumPy 2: every
    kernel, this copy too, returns garbage (triton-lang/triton#5387); with NumPy 1.26, or from Triton 3.2
    on, it runs these tests right."""
    if not (INTERPRETED and HAS_TRITON):
        return ''
    import numpy
    x = torch.arange(1., 9.)
    y = torch.zeros_like(x)
    _copy[(1,)](x, y, 8, BLOCK=8)
    if torch.equal(x, y):
        return ''
    return f"Triton {triton.__version__}'s interpreter fails to copy a tensor with NumPy {numpy.__version__}"


INTERPRETER_FAULT = _interpreter_fault()
pytestmark = [
    pytest.mark.skipif(not HAS_TRITON or not (CUDA or INTERPRETED),
                       reason='needs Triton, and a CUDA device or TRITON_INTERPRET=1'),
    pytest.mark.skipif(bool(INTERPRETER_FAULT), reason=INTERPRETER_FAULT),
]

LAYOUTS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}
SIZES = [(1, 1), (1, 4), (2, 5), (4, 4), (7, 3), (6, 8), (5, 5)]
UP_MODES = ['bilinear', 'nearest']


def kernels():
    """(down, down's gradient, up_add, up's gradient): the ops on CUDA, the Triton functions interpreted."""
    if CUDA:
        ops = torch.ops.timm_elastic
        return avg_down2x, ops.avg_down2x_backward, up2x_add, ops.up2x_backward
    from timm_elastic.layers import resample_triton as t
    return t.avg_down2x, t.avg_down2x_backward, t.up2x_add, t.up2x_backward


def randn(*size, layout='nchw', dtype=torch.float64):
    return torch.randn(*size, dtype=dtype, device=DEVICE).contiguous(memory_format=LAYOUTS[layout])


def ref_up(low, mode):
    kwargs = dict(align_corners=False) if mode == 'bilinear' else {}
    return F.interpolate(low, scale_factor=2., mode=mode, **kwargs)


def check_down(x, atol=1e-12):
    down, down_grad, _, _ = kernels()
    x = x.detach().requires_grad_()
    ref = F.avg_pool2d(x, 2, stride=2, ceil_mode=True)
    y = down(x.detach())
    torch.testing.assert_close(y, ref, rtol=0, atol=atol)
    g = torch.randn_like(ref)
    torch.testing.assert_close(down_grad(g, *x.shape[-2:]), torch.autograd.grad(ref, x, g)[0], rtol=0, atol=atol)
    return y


def check_up_add(low, out, mode, atol=1e-12):
    _, _, up_add, up_grad = kernels()
    low = low.detach().requires_grad_()
    ref = out + ref_up(low, mode)[:, :, :out.shape[-2], :out.shape[-1]]
    y = up_add(low.detach(), out, mode)
    torch.testing.assert_close(y, ref, rtol=0, atol=atol)
    g = torch.randn_like(ref)
    torch.testing.assert_close(up_grad(g, mode, *low.shape[-2:]), torch.autograd.grad(ref, low, g)[0],
                               rtol=0, atol=atol)
    return y


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('size', SIZES)
def test_down_and_its_gradient(size, layout):
    y = check_down(randn(2, 3, *size, layout=layout))
    assert y.is_contiguous(memory_format=LAYOUTS[layout])


@pytest.mark.parametrize('mode', UP_MODES)
@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('size', SIZES)
def test_up_add_and_its_gradient(size, layout, mode):
    h, w = size
    y = check_up_add(randn(2, 3, (h + 1) // 2, (w + 1) // 2, layout=layout), randn(2, 3, h, w, layout=layout), mode)
    assert y.is_contiguous(memory_format=LAYOUTS[layout])


@pytest.mark.parametrize('mode', UP_MODES)
def test_strided_and_mixed_layout_inputs(mode):
    # inputs are read through their strides: a channel slice of a wider tensor, low and out in other layouts
    x = randn(2, 8, 7, 6)[:, ::2]
    check_down(x)
    check_up_add(randn(2, 6, 4, 3, layout='channels_last')[:, 1:5], randn(2, 4, 7, 6), mode)
    y = check_up_add(randn(2, 4, 4, 3), randn(2, 4, 8, 5, layout='channels_last'), mode)
    assert y.is_contiguous(memory_format=torch.channels_last)  # the sum takes the layout of `out`
    # a slice of channels of a channels_last tensor (a gradient DenseNet passes is one) computes in channels_last
    cl = torch.channels_last
    _, down_grad, _, up_grad = kernels()
    x = randn(2, 8, 7, 6, layout='channels_last')[:, 1::2]
    assert check_down(x).is_contiguous(memory_format=cl)
    assert check_up_add(randn(2, 4, 4, 3), x, mode).is_contiguous(memory_format=cl)
    g_low = randn(2, 8, 4, 3, layout='channels_last')[:, 1::2]
    for y, dense in ((up_grad(x, mode, 4, 3), up_grad(x.contiguous(), mode, 4, 3)),
                     (down_grad(g_low, 7, 6), down_grad(g_low.contiguous(), 7, 6))):
        torch.testing.assert_close(y, dense, rtol=0, atol=0)
        assert y.is_contiguous(memory_format=cl)


@pytest.mark.parametrize('mode', UP_MODES)
def test_tiles_wider_than_one_program(mode):
    # more channels (channels_last) or columns (NCHW) than one program's tile holds: several column blocks
    check_down(randn(1, 130, 3, 5, layout='channels_last'))
    check_down(randn(1, 2, 3, 261))
    check_up_add(randn(1, 130, 2, 3, layout='channels_last'), randn(1, 130, 3, 5, layout='channels_last'), mode)
    check_up_add(randn(1, 2, 2, 131), randn(1, 2, 4, 261), mode)


def test_64_bit_offsets(monkeypatch):
    """Tensors spanning 2^31 elements or more are indexed in 64 bits: which ones (on meta tensors, which have
    no storage), and that the 64-bit kernels give the same results (on small tensors, the threshold lowered)."""
    from timm_elastic.layers import resample_triton

    def spanning(stride):  # two elements `stride` apart: offsets 0 and `stride`
        return torch.empty_strided((2, 1, 1, 1), (stride, 1, 1, 1), device='meta')
    assert not resample_triton._needs_int64(spanning(2 ** 31 - 2), torch.empty(4, 3, 2, 2, device='meta'))
    assert resample_triton._needs_int64(torch.empty(1, 1, 1, 1, device='meta'), spanning(2 ** 31 - 1))
    assert resample_triton._needs_int64(torch.empty(2 ** 16, 2 ** 15, 1, 1, device='meta'))
    monkeypatch.setattr(resample_triton, 'INT32_LIMIT', 0)
    check_down(randn(2, 3, 5, 6, layout='channels_last'))
    check_up_add(randn(2, 3, 3, 3), randn(2, 3, 5, 6), 'bilinear')


@pytest.mark.parametrize('layout', LAYOUTS)
def test_launchers_only_allocate_their_result(layout, monkeypatch):
    """Outside its kernel, each launcher does one thing to tensors: allocate its result, once, already in
    its layout. (Allocating then converting, `new_empty(size).contiguous(channels_last)`, copied an
    uninitialised tensor per call: 22% of a resnext50_elastic training step on an H200.) The kernel
    launch is recorded, not run, so what is counted is the launcher's alone."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from timm_elastic.layers import resample_triton

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    launched = []
    monkeypatch.setattr(resample_triton, '_run', lambda kernel, grid, args, meta: launched.append(kernel))
    low, full = randn(2, 3, 4, 3, layout=layout), randn(2, 3, 7, 6, layout=layout)
    calls = [(resample_triton.avg_down2x, (full,)), (resample_triton.avg_down2x_backward, (low, 7, 6)),
             (resample_triton.up2x_add, (low, full, 'bilinear')),
             (resample_triton.up2x_backward, (full, 'nearest', 4, 3))]
    for fn, args in calls:
        seen = []
        with Ops():
            y = fn(*args)
        assert len(seen) == 1 and seen[0].startswith(('aten.empty', 'aten.new_empty')), (fn.__name__, seen)
        assert y.is_contiguous(memory_format=LAYOUTS[layout]), fn.__name__
    assert len(launched) == len(calls)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize('layout', LAYOUTS)
def test_low_precision(dtype, tol, layout):
    """Computed in float32, stored in the tensors' dtype: relative error ||y - ref|| / ||ref|| against
    float64 on the same (rounded) inputs, at that dtype's rounding."""
    down, down_grad, up_add, up_grad = kernels()
    x, g = randn(4, 16, 13, 10, layout=layout, dtype=dtype), randn(4, 16, 7, 5, layout=layout, dtype=dtype)
    low, out = randn(4, 16, 7, 5, layout=layout, dtype=dtype), randn(4, 16, 13, 10, layout=layout, dtype=dtype)
    xd, gd, lowd, outd = (t.double().requires_grad_() for t in (x, g, low, out))
    pooled = F.avg_pool2d(xd, 2, stride=2, ceil_mode=True)
    summed = outd + ref_up(lowd, 'bilinear')[:, :, :13, :10]
    g_sum = torch.randn_like(summed).to(dtype)
    cases = [(down(x), pooled), (down_grad(g, 13, 10), torch.autograd.grad(pooled, xd, gd)[0]),
             (up_add(low, out, 'bilinear'), summed),
             (up_grad(g_sum, 'bilinear', 7, 5), torch.autograd.grad(summed, lowd, g_sum.double())[0])]
    for y, ref in cases:
        assert y.dtype == dtype and y.is_contiguous(memory_format=LAYOUTS[layout])
        assert ((y.double() - ref).norm() / ref.norm()).item() < tol


@pytest.mark.parametrize('layout', LAYOUTS)
def test_fake_kernels_describe_the_triton_results(layout):
    """What torch.compile is told (the ops' fake kernels) is what the Triton kernels return: shape, strides
    and dtype, mixed dtypes included (the sum's dtype is that of `out + low`)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    ops = torch.ops.timm_elastic
    f32, bf16 = torch.float32, torch.bfloat16
    calls = [('avg_down2x', (randn(2, 3, 7, 6, layout=layout, dtype=bf16),)),
             ('avg_down2x_backward', (randn(2, 3, 4, 3, layout=layout, dtype=f32), 7, 6)),
             ('up2x_add', (randn(2, 3, 4, 3, layout=layout, dtype=f32), randn(2, 3, 7, 6, layout=layout, dtype=bf16),
                           'bilinear')),
             ('up2x_add', (randn(2, 3, 4, 3, layout=layout, dtype=bf16), randn(2, 3, 8, 6, layout=layout, dtype=bf16),
                           'nearest')),
             ('up2x_backward', (randn(2, 3, 7, 6, layout=layout, dtype=f32), 'bilinear', 4, 3))]
    triton_fns = dict(zip(('avg_down2x', 'avg_down2x_backward', 'up2x_add', 'up2x_backward'), kernels()))
    for name, args in calls:
        real = triton_fns[name](*args)
        mode = FakeTensorMode()
        with mode:
            fake = getattr(ops, name)(*[mode.from_tensor(a) if torch.is_tensor(a) else a for a in args])
        assert (fake.shape, fake.stride(), fake.dtype) == (real.shape, real.stride(), real.dtype), name


cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA device')


@cuda
@pytest.mark.parametrize('layout', LAYOUTS)
def test_cuda_ops_run_the_triton_kernels(layout):
    low = randn(2, 3, 4, 4, layout=layout, dtype=torch.float32).requires_grad_()
    out = randn(2, 3, 7, 8, layout=layout, dtype=torch.float32).requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        y = up2x_add(low, out, 'bilinear')
        z = avg_down2x(y)
        z.backward(torch.randn_like(z))
        torch.cuda.synchronize()
    names = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
    for kernel in ('_up2x_add_kernel', '_up2x_backward_kernel', '_avg_down2x_kernel', '_avg_down2x_backward_kernel'):
        assert any(kernel in n for n in names), (kernel, names)
    assert not any('upsample' in n or 'avg_pool' in n for n in names), names


@cuda
@pytest.mark.parametrize('layout', LAYOUTS)
def test_cuda_gradcheck_and_registration(layout):
    low = randn(2, 3, 4, 3, layout=layout).requires_grad_()
    out = randn(2, 3, 7, 6, layout=layout).requires_grad_()
    for mode in UP_MODES:
        assert torch.autograd.gradcheck(lambda lo, o: up2x_add(lo, o, mode), (low, out))
        torch.library.opcheck(up2x_add, (low.float(), out.float(), mode))
    assert torch.autograd.gradcheck(avg_down2x, (out,))
    torch.library.opcheck(avg_down2x, (out.detach().float().requires_grad_(),))


@pytest.mark.parametrize('mode', UP_MODES)
@pytest.mark.parametrize('layout', LAYOUTS)
def test_second_derivatives_through_the_direct_path(layout, mode, monkeypatch):
    """Run eagerly, the modules call these kernels directly, forward and backward (on a CPU tensor here: they
    are interpreted); the kernels record no gradient of their own, so with `create_graph` the backward passes
    run the gradient ops, whose gradients are registered: gradgradcheck of D and U + sum passes. On CUDA also
    through the ops, whose second derivatives run these kernels too."""
    from timm_elastic.layers import resample
    if not CUDA:
        from timm_elastic.layers import resample_triton
        monkeypatch.setattr(resample, '_kernel', lambda name, args: getattr(resample_triton, name))
    x = randn(1, 2, 3, 4, layout=layout).requires_grad_()

    def block(x):
        return resample.InterpolateUp(mode)(resample.AvgDown()(x), x)
    assert block(x).grad_fn.name() == '_DirectUpAddBackward'
    assert torch.autograd.gradgradcheck(block, (x,))
    if CUDA:
        assert torch.autograd.gradgradcheck(lambda x: up2x_add(avg_down2x(x), x, mode), (x,))
