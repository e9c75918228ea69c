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
