"""The built-in synthetic scale-challenging dataset (paper Sec. 4.2, Table 4), see `scales`.

Imports only numpy, PIL and torch, so that the models can name its classes without a cycle.
"""
from .scales import (
    CLASSES, COMBINATIONS, DEFAULT_SAMPLES, SEGMENTATION_CLASSES, SIZE_RANGES, SIZES, SPLITS, ScaleShapes,
    combination_name, is_image_folder, read_combinations, write_image_folder,
)

__all__ = [
    'CLASSES', 'COMBINATIONS', 'DEFAULT_SAMPLES', 'SEGMENTATION_CLASSES', 'SIZE_RANGES', 'SIZES', 'SPLITS',
    'ScaleShapes', 'combination_name', 'is_image_folder', 'read_combinations', 'write_image_folder',
]
