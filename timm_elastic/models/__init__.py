"""Elastic model families. Importing this package registers every model in timm's registry."""
from typing import List

import timm

from . import densenet, dla, resnet
from .densenet import *
from .dla import *
from .resnet import *

# registered model name -> its published counts (timm-elastic models prints them side by side)
PAPER_ROWS = {**resnet.PAPER_ROWS, **dla.PAPER_ROWS, **densenet.PAPER_ROWS}
# small Elastic model -> its non-Elastic twin (same parameters and multiply-adds within a few
# percent), registered for training on a CPU; not in the paper
TWINS = {**resnet.TWINS}


def list_models() -> List[str]:
    """Every architecture this package registers in timm: the Elastic models and the faithful
    baselines that timm has no exact equivalent of (sorted as timm sorts)."""
    return [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith(__name__ + '.')]
