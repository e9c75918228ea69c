"""Parameter and multiply-add counts, and the published numbers they are compared with."""
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['PaperRow', 'count_params', 'count_gmacs']


@dataclass(frozen=True)
class PaperRow:
    """A model as the paper prints it, or the original implementation's model (source 'original code')
    counted as `count_params` / `count_gmacs` count ours: parameters (millions) and multiply-adds (billions)
    for one 224x224 image."""
    row: str
    params_m: float
    gmacs: float
    source: str = 'original code'


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gmacs(model: nn.Module, input_size: Tuple[int, int, int] = (3, 224, 224)) -> float:
    """Multiply-adds, in billions, of one eval-mode forward pass of a single (C, H, W) image.

    Counted by `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products;
    pooling, normalisation, activations and resampling are not counted): GMACs = FLOPs / 2e9. The paper
    does not say what it counted; its numbers equal this count at its precision but for the DLA-X+Elastic
    rows. The original repository's own counter (`utils.add_flops_counting_methods`) counts BatchNorm, ReLU
    and pooling layers too.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_size, device=param.device if param is not None else 'cpu')
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2e9
