"""Every registered Elastic model as a segmentation_models_pytorch `tu-` encoder (issue 20): Unet, FPN, DeepLabV3 and
DeepLabV3+ at encoder output strides 8 and 16, forward and backward on small inputs. (Loading the ImageNet tags
through smp: tests/test_pretrained.py.)"""
import pytest
import torch

import timm_elastic

smp = pytest.importorskip('segmentation_models_pytorch')

ELASTIC = [n for n in timm_elastic.list_models() if 'elastic' in n]
ARCHS = [('Unet', None), ('FPN', None), ('DeepLabV3', 8), ('DeepLabV3', 16), ('DeepLabV3Plus', 8),
         ('DeepLabV3Plus', 16)]


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::UserWarning')
@pytest.mark.parametrize('name', ELASTIC)
def test_every_elastic_model_is_an_smp_encoder(name):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for arch, output_stride in ARCHS:
        kwargs = dict(encoder_output_stride=output_stride) if output_stride else {}
        model = getattr(smp, arch)(f'tu-{name}', encoder_weights=None, classes=3, **kwargs)
        y = model(x)
        assert y.shape == (2, 3, 32, 32), (arch, output_stride)
        y.square().mean().backward()
        grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), (arch, output_stride)
