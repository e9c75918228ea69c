"""Elastic model families. Importing this package registers every model in timm's registry."""
from . import resnet
from .resnet import *

# registered model name -> its published counts (timm-elastic models prints them side by side)
PAPER_ROWS = {**resnet.PAPER_ROWS}
