"""Pooling at every position, for models whose `output_stride` turns a stride-2 stage into a dilated one.

A 2x2 pooling of stride 2 whose output feeds convolutions that are then dilated (the algorithme a trous)
becomes a 2x2 pooling of stride 1 over taps `dilation` apart, where `dilation` is the spacing at which
the stride model's values now lie (1 for the first dilated stage, 2 for the next). At the positions the
stride model computed, the values are the same; the last `dilation` rows and columns are padded by
replication (a value the stride model never reads there).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['PoolEveryPosition', 'check_output_stride']


def check_output_stride(output_stride) -> None:
    """The strides an Elastic model can end at (timm's ResNet asserts it without a word): 8, 16 or 32."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride!r}')


class PoolEveryPosition(nn.Module):
    """2x2 'avg' or 'max' pooling at stride 1 over taps `dilation` apart: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, mode: str, dilation: int = 1):
        super().__init__()
        if mode not in ('avg', 'max'):
            raise ValueError(f"mode must be 'avg' or 'max', got {mode!r}")
        self.mode, self.dilation = mode, int(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation
        h, w = x.shape[-2:]
        x = F.pad(x, (0, d, 0, d), mode='replicate')
        taps = (x[..., :h, :w], x[..., d:d + h, :w], x[..., :h, d:d + w], x[..., d:d + h, d:d + w])
        if self.mode == 'max':
            return torch.maximum(torch.maximum(taps[0], taps[1]), torch.maximum(taps[2], taps[3]))
        return (taps[0] + taps[1] + taps[2] + taps[3]) * 0.25

    def extra_repr(self) -> str:
        return f'mode={self.mode!r}, dilation={self.dilation}'
