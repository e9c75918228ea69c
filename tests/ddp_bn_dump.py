"""`timm-elastic train` for tests/test_train.py, run under torchrun: every process also writes its model's
BatchNorm statistics where evaluation begins (after the epoch's --dist-bn step) to $BN_DUMP_DIR/rank<R>.pt,
so that the test can compare the processes' statistics with each other."""
import os
import sys

import torch

import timm_elastic.train as train_module
from timm_elastic.cli import main

_evaluate = train_module.evaluate


def evaluate_and_dump(model, loader, args, *rest, **kwargs):
    stats = {n: b.detach().cpu().clone() for n, b in model.named_buffers() if 'running_' in n}
    torch.save(stats, os.path.join(os.environ['BN_DUMP_DIR'], f'rank{args.rank}.pt'))
    return _evaluate(model, loader, args, *rest, **kwargs)


train_module.evaluate = evaluate_and_dump
sys.exit(main(sys.argv[1:]))
