"""timm-elastic: ELASTIC (Wang et al., CVPR 2019) models in timm's registry.

Importing the package registers every Elastic model, so `timm.create_model('resnext50_elastic')`
works; `from_original` and `export_original` convert the authors' released checkpoints. It is also
a pytest plugin (`pytest -p timm_elastic`) for running timm's own model tests against the models.
"""
from .convert import ORIGINALS, CheckpointError, from_original
from .hub import export_original
from .layers import Elastic, RESAMPLE_MODES, check_elastic_args, split_paths
from .models import PAPER_ROWS, TWINS, list_models
from .models._builder import PretrainedWeightsError
from .policy import ScalePolicy, policy_blocks, scale_policy

__version__ = '0.1.0'
