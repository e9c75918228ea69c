"""The `timm-elastic` command. Argument parsing only; the work is done by the package's modules."""
import argparse
import fnmatch
import json
import os
import sys
from typing import List, Optional

__all__ = ['main']


def _models(args: argparse.Namespace) -> int:
    import timm
    from .complexity import count_gmacs, count_params
    from .models import PAPER_ROWS

    names = [n for n in PAPER_ROWS if fnmatch.fnmatch(n, args.filter)]
    if not names:
        print(f'timm-elastic models: no registered model matches {args.filter!r}; '
              f'registered: {", ".join(PAPER_ROWS)}', file=sys.stderr)
        return 2
    rows = []
    for name in names:
        paper = PAPER_ROWS[name]
        model = timm.create_model(name)
        row = dict(
            model=name, paper_row=paper.row, source=paper.source,
            params_m=count_params(model) / 1e6, paper_params_m=paper.params_m,
            gmacs=count_gmacs(model, (3, args.img_size, args.img_size)), paper_gmacs=paper.gmacs,
        )
        # DLA: the original code counts projections that it runs but never uses (models/dla.py)
        unused = getattr(model, 'unused_original_counts', None)
        params, gmacs = unused(args.img_size) if unused is not None else (0, 0.)
        if params:
            row.update(original_unused_params_m=params / 1e6, original_unused_gmacs=gmacs)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f'Models registered in timm by timm-elastic: parameters and GMACs (multiply-adds) at '
          f'{args.img_size}x{args.img_size}, beside the published numbers (at 224x224).')
    header = (f'{"model":<22} {"paper row":<22} {"params (M)":>10} {"paper":>7} {"diff":>8} '
              f'{"GMACs":>7} {"paper":>6} {"diff":>8}  source')
    print(header)
    print('-' * len(header))

    def diff(ours: float, paper: float) -> str:
        return f'{100 * (ours / paper - 1):>+6.2f}%'

    for r in rows:
        mark = '*' if 'original_unused_params_m' in r else ' '
        print(f'{r["model"]:<22} {r["paper_row"]:<22} {r["params_m"]:>10.2f} {r["paper_params_m"]:>7.2f} '
              f'{diff(r["params_m"], r["paper_params_m"])}{mark} {r["gmacs"]:>7.2f} {r["paper_gmacs"]:>6.2f} '
              f'{diff(r["gmacs"], r["paper_gmacs"])}{mark}  {r["source"]}')
    marked = [r for r in rows if 'original_unused_params_m' in r]
    if marked:
        print('\n* The original DLA code builds, runs and counts projections whose outputs it never uses; ours '
              '(like timm\'s DLA)\n  leave them out. The same rows with them added back:')
        for r in marked:
            params = r['params_m'] + r['original_unused_params_m']
            gmacs = r['gmacs'] + r['original_unused_gmacs']
            print(f'  {r["model"]:<20} +{r["original_unused_params_m"]:.2f}M params = {params:.2f} '
                  f'({diff(params, r["paper_params_m"]).strip()}), +{r["original_unused_gmacs"]:.2f} GMACs = '
                  f'{gmacs:.2f} ({diff(gmacs, r["paper_gmacs"]).strip()})')
    return 0


def _convert(args: argparse.Namespace) -> int:
    import warnings
    from .convert import CheckpointError
    from .hub import export_original

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # timm's notices about the model being built
            done = export_original(args.checkpoint, args.out, arch=args.arch, force=args.force)
    except (CheckpointError, FileExistsError, FileNotFoundError, ValueError, OSError) as e:
        print(f'timm-elastic convert: error: {e}', file=sys.stderr)
        return 2
    name = f'{done.model}.{done.tag}' if done.tag else done.model
    print(f'converted original {done.arch} -> {name} ({done.params / 1e6:.2f}M parameters, '
          f'{done.num_classes} classes)')
    print(f'wrote {done.path}: {", ".join(sorted(os.listdir(done.path)))}')
    print(f"load it with timm.create_model('local-dir:{done.path}') after import timm_elastic")
    if done.repo_id:
        print(f'it is the folder of the Hub repository {done.repo_id}: '
              f'hf upload {done.repo_id} {done.path}')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-elastic',
        description='ELASTIC (Wang et al., CVPR 2019) models for timm. Every model is also available '
                    'through timm.create_model(NAME) once timm_elastic is imported.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    p = sub.add_parser(
        'models', help='list the registered models (Elastic and faithful baselines) with their parameters and GMACs',
        description='Build every model this package registers in timm (the Elastic models and the faithful '
                    'baselines) and print its parameter count and multiply-adds beside the numbers of the '
                    'paper / original code.')
    p.add_argument('--filter', default='*', metavar='PATTERN',
                   help="only models whose name matches this wildcard pattern, e.g. 'resnext*' (default: all)")
    p.add_argument('--img-size', type=int, default=224, metavar='N',
                   help='square input size for counting multiply-adds (default: 224, as in the paper)')
    p.add_argument('--json', action='store_true', help='print the rows as JSON instead of a table')
    p.set_defaults(func=_models)

    p = sub.add_parser(
        'convert', help="convert an original ELASTIC checkpoint into a timm model folder for the Hugging Face Hub",
        description="Convert a checkpoint released with the original ELASTIC code (allenai/elastic: "
                    "<arch>.pth.tar for ImageNet, coco_<arch>.pth.tar for MS COCO) into the timm model that "
                    "computes the same outputs, and write the folder of its Hub repository: config.json (timm's "
                    "format), model.safetensors and a README.md model card. The checkpoint is read with "
                    "torch.load(weights_only=True) and never modified.",
        epilog="example: timm-elastic convert dla60x_elastic.pth.tar --out dla_x60_elastic.in1k")
    p.add_argument('checkpoint', metavar='CKPT', help='the original checkpoint file (.pth.tar)')
    p.add_argument('--arch', metavar='A', default=None,
                   help='original architecture name, e.g. dla60x_elastic (default: inferred from the keys)')
    p.add_argument('--out', metavar='DIR', required=True, help='the folder to write (must not exist, see --force)')
    p.add_argument('--force', action='store_true', help='replace DIR if it already exists')
    p.set_defaults(func=_convert)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, 'img_size', 224) < 32:
        print(f'timm-elastic: --img-size must be at least 32, got {args.img_size}', file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
