import os

import pytest
import torch

# The Triton kernels of the CUDA path (timm_elastic/layers/resample_triton.py) run on CPU tensors through
# Triton's interpreter where no GPU is: tests/test_resample_triton.py checks them so. Set before they are
# first imported (Triton reads it when a kernel is defined).
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def intermediates():
    """`intermediates(model, x)`: the eval-mode model's `forward_intermediates(x, intermediates_only=True)`
    without autograd; skips the test where timm is too old to give the model one (timm's DLA and DenseNet,
    which ours inherit it from, have it from timm 1.0.31 on)."""
    def run(model, x):
        import timm  # here: conftest sets TRITON_INTERPRET before anything can import the kernels
        if not hasattr(model, 'forward_intermediates'):
            pytest.skip(f'timm {timm.__version__} has no forward_intermediates for {type(model).__mro__[1].__name__}')
        with torch.no_grad():
            return model.eval().forward_intermediates(x, intermediates_only=True)
    return run
