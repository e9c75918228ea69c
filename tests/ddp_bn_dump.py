"""`timm-elastic train` for tests/test_train.py, run under torchrun: every process also writes its model's
BatchNorm statistics where evaluation begins (after the epoch's --dist-bn step) to $BN_DUMP_DIR/rank<R>.pt,
so that the test can compare the processes' statistics with each other; and after the command, whether
its process group is still up, to $BN_DUMP_DIR/group<R>.txt."""
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
code = main(sys.argv[1:])
# whether the command left its process group up (it must end it: left to the interpreter's exit, gloo's
# threads can abort the process)
with open(os.path.join(os.environ['BN_DUMP_DIR'], f"group{os.environ['RANK']}.txt"), 'w') as f:
    f.write(str(torch.distributed.is_initialized()))
sys.exit(code)
