"""The resampling op of the Elastic mechanism (`timm_elastic::resample2x`): the values and gradients of
PyTorch's own ops in every layout, and the ways users run models: eager, torch.compile (without graph
breaks), TorchScript and torch.jit.trace."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_elastic
from timm_elastic.layers import Elastic
from timm_elastic.layers.resample import InterpolateUp, resample2x

ATEN = {
    'avg_down': lambda t: F.avg_pool2d(t, 2, stride=2, ceil_mode=True),
    'bilinear_up': lambda t: F.interpolate(t, scale_factor=2., mode='bilinear', align_corners=False),
    'nearest_up': lambda t: F.interpolate(t, scale_factor=2., mode='nearest'),
}
LAYOUTS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}
SIZES = [(1, 1), (1, 3), (2, 5), (4, 4), (7, 3), (6, 8), (5, 5)]


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('kind', ATEN)
@pytest.mark.parametrize('size', SIZES)
def test_values_and_gradients_are_pytorchs(kind, layout, size):
    x = torch.randn(2, 3, *size, dtype=torch.float64).contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
    y, ref = resample2x(x, kind), ATEN[kind](x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(ref, x, grad)[0],
                               rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: resample2x(t, kind), (x,))
    # the layout of the input is kept (what the fake kernel promises torch.compile); a 1x1 map is
    # both layouts at once, and resampled as NCHW
    assert y.is_contiguous(memory_format=torch.contiguous_format if x.is_contiguous() else LAYOUTS[layout])


@pytest.mark.parametrize('kind', ATEN)
def test_fp32_at_feature_map_sizes(kind):
    # the strided NCHW kernels on a realistic block input, against PyTorch's, to fp32 rounding
    x = torch.randn(4, 64, 56, 56).requires_grad_()
    y, ref = resample2x(x, kind), ATEN[kind](x)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(y, x, grad)[0], torch.autograd.grad(ref, x, grad)[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('kind,aten_op', [
    ('avg_down', 'aten::avg_pool2d'), ('bilinear_up', 'aten::upsample_bilinear2d'),
    ('nearest_up', 'aten::upsample_nearest2d')])
def test_which_kernels_run(kind, aten_op):
    """PyTorch's kernels are slow on contiguous NCHW CPU tensors: the strided ones run there, forward
    and backward; PyTorch's own on channels_last tensors and where pooling meets an odd size."""
    def ops(x):
        with torch.profiler.profile() as prof:
            resample2x(x, kind).sum().backward()
        return {e.name for e in prof.events()}
    nchw = ops(torch.randn(2, 4, 8, 6, requires_grad=True))
    assert aten_op not in nchw and f'{aten_op}_backward' not in nchw
    assert aten_op in ops(torch.randn(2, 4, 8, 6).contiguous(memory_format=torch.channels_last).requires_grad_())
    assert aten_op in ops(torch.randn(2, 4, 7, 6, requires_grad=True)) or kind != 'avg_down'


@pytest.mark.parametrize('kind', ATEN)
def test_bfloat16(kind):
    x = torch.randn(2, 8, 10, 12, dtype=torch.bfloat16)
    torch.testing.assert_close(resample2x(x, kind), ATEN[kind](x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('kind', ATEN)
def test_custom_op_registration(kind, layout):
    # schema, fake kernel (shapes and strides for torch.compile), autograd registration
    x = torch.randn(2, 3, 6, 5).contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
    torch.library.opcheck(resample2x, (x, kind))


class Sigmoid(nn.Sequential):
    """A path whose last op keeps its output for backward: the sum must not be written into it."""

    def __init__(self, in_chs, out_chs, paths, dilation):
        super().__init__(nn.Conv2d(in_chs, out_chs, 3, padding=dilation, dilation=dilation), nn.Sigmoid())


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('size', [(8, 8), (7, 9)])
@pytest.mark.parametrize('mode', timm_elastic.RESAMPLE_MODES)
def test_gradients_through_the_sum(mode, size, layout):
    m = Elastic(lambda n, d: Sigmoid(4, 3, n, d), 4, 4, 3, elastic_resample=mode).double()
    x = torch.randn(2, 4, *size, dtype=torch.float64).contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
    assert torch.autograd.gradcheck(m, (x,))


def test_up_mode_is_checked():
    with pytest.raises(ValueError, match="InterpolateUp mode must be 'bilinear' or 'nearest', got 'area'"):
        InterpolateUp('area')


def tiny(name='resnext_tiny_elastic', **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4, **kwargs)
    for m in model.modules():  # non-trivial statistics and affine, so that every path shows
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_var.uniform_(0.5, 2.)
    return model


def test_compiled_model_matches_eager():
    # inference compiles the aten ops, training the custom op (see timm_elastic.layers.resample)
    model = tiny()
    x = torch.randn(2, 3, 48, 40)
    compiled = torch.compile(model, fullgraph=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    model.train()
    eager_grads = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    compiled_grads = torch.autograd.grad(compiled(x).square().sum(), list(model.parameters()))
    for name, c, e in zip([n for n, _ in model.named_parameters()], compiled_grads, eager_grads):
        # fp32 rounding, summed in another order: relative to the tensor's scale
        assert (c - e).abs().max() <= 1e-3 * e.abs().max() + 1e-6, name


def graph_breaks(model, x):
    explained = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    return [str(b.reason) for b in explained.break_reasons]


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('name', timm_elastic.list_models())
def test_no_graph_breaks(name, train):
    model = timm.create_model(name, num_classes=4).train(train)
    assert graph_breaks(model, torch.randn(2, 3, 64, 64)) == []


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('mode', timm_elastic.RESAMPLE_MODES)
def test_no_graph_breaks_in_any_resample_mode(mode, train):
    model = tiny(elastic_resample=mode).train(train)
    assert graph_breaks(model, torch.randn(2, 3, 37, 42)) == []


class LeafTracer(torch.fx.Tracer):
    """torch.fx as timm's feature extraction runs it: timm's registered no-trace modules are leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, tuple(timm.models.get_notrace_modules())) or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize('mode', timm_elastic.RESAMPLE_MODES)
def test_every_resample_mode_scripts_and_fx_traces(mode):
    model = tiny(elastic_resample=mode).eval()
    x = torch.randn(2, 3, 37, 42)
    with torch.no_grad():
        expected = model(x)
        fx_model = torch.fx.GraphModule(model, LeafTracer().trace(model))
        for m in (torch.jit.script(model), fx_model, torch.jit.script(fx_model)):
            torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


def test_scripted_and_traced_models_need_no_custom_op():
    model = tiny().eval()
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        traced = torch.jit.trace(model, x)
        for m in (scripted, traced):
            torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
            assert 'timm_elastic::' not in str(m.inlined_graph)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


@cuda
@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('kind', ATEN)
def test_cuda_values_gradients_and_registration(kind, layout):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device='cuda')
    x = x.contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
    y, ref = resample2x(x, kind), ATEN[kind](x)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    assert y.is_contiguous(memory_format=LAYOUTS[layout])
    assert torch.autograd.gradcheck(lambda t: resample2x(t, kind), (x,))
    torch.library.opcheck(resample2x, (x.detach().float().requires_grad_(), kind))


@cuda
def test_cuda_compiled_channels_last_training_matches_eager():
    # in float64, so that what differs is the code, not the rounding (train-mode batch norm
    # cancels most of a gradient, which magnifies fp32 rounding to a few percent)
    model = tiny().cuda().double().to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 3, 64, 56, device='cuda', dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    eager_grads, compiled_grads = (torch.autograd.grad(fn(x).square().sum(), list(model.parameters()))
                                   for fn in (model, compiled))
    for name, e, c in zip([n for n, _ in model.named_parameters()], eager_grads, compiled_grads):
        assert (c - e).abs().max() <= 1e-9 * e.abs().max() + 1e-12, name


@cuda
@pytest.mark.parametrize('amp', [torch.bfloat16, torch.float16])
def test_cuda_amp_channels_last(amp):
    # the GPU benchmark's setting: compiled without graph breaks, finite gradients, and in eval
    # the fp32 model's logits to autocast's rounding
    model = tiny().cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 56, device='cuda').contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    with torch.autocast('cuda', dtype=amp):
        assert graph_breaks(model.train(), x) == []
        grads = torch.autograd.grad(compiled(x).float().square().sum(), list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        with torch.autocast('cuda', dtype=amp):
            for fn in (model, compiled):
                torch.testing.assert_close(fn(x).float(), expected, rtol=5e-2, atol=5e-2 * expected.abs().max().item())
