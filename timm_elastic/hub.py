"""Hugging Face Hub folders of the authors' converted weights.

`export_original` turns an original checkpoint into the folder that its Hub repository
(`timm-elastic/<model>.<tag>`, see models/_cfg.py) holds, in timm's own format:
- `config.json`: architecture, num_classes, label names, model args, pretrained_cfg (timm's
  `save_for_hf`), so `timm.create_model('local-dir:DIR', pretrained=True)` and `'hf-hub:ORG/NAME'` rebuild it;
- `model.safetensors`: the converted state dict;
- `README.md`: a model card with the paper's results for these weights and where they came from.
The folder is written next to its destination and renamed into place, so it is complete or absent.

The released PASCAL VOC segmentation models (`convert.SEG_ORIGINALS`) are not timm classifiers: their folder
holds `config.json` with the `timm_elastic.segmentation` architecture name, `model.safetensors` and a card
with the paper's Table 5 row; `timm_elastic.segmentation.create_model('local-dir:DIR')` (or `'hf-hub:REPO'`)
rebuilds the model from it.
"""
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

import torch

from ._io import OutputExistsError, check_not_a_link, check_outside_cwd, staged_dir
from .convert import (
    ORIGINALS, SEG_ORIGINALS, Original, from_original, infer_arch, load_original, num_classes_of, release_tag)

__all__ = ['Export', 'export_original', 'model_card', 'sha256_file']

# a pretrained tag's dataset, as the model card names it
_DATASETS = {'in1k': 'ImageNet-1k', 'coco': 'MS COCO'}

_CITATION = """@inproceedings{wang2019elastic,
  title={ELASTIC: Improving CNNs with Dynamic Scaling Policies},
  author={Wang, Huiyu and Kembhavi, Aniruddha and Farhadi, Ali and Yuille, Alan L. and Rastegari, Mohammad},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2019}
}"""


@dataclass
class Export:
    """What `export_original` wrote."""
    path: str        # the folder
    arch: str        # original architecture name
    model: str       # timm model name
    tag: Optional[str]
    repo_id: Optional[str]  # the Hub repository the folder is meant for
    params: int
    num_classes: int


def sha256_file(path: str) -> str:
    """The hex SHA-256 of a file's bytes (the Hub's id of a large file)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def export_original(
        checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
        out_dir: Union[str, os.PathLike],
        arch: Optional[str] = None,
        force: bool = False,
) -> Export:
    """Convert an original ELASTIC checkpoint and write its Hub folder to `out_dir`.

    `arch` is inferred from the keys when omitted. An existing `out_dir` is replaced only with
    `force`, and never when the checkpoint itself lies inside it. Raises FileExistsError,
    FileNotFoundError, `convert.CheckpointError` or ValueError, naming the problem.
    """
    import timm
    from timm.models import save_for_hf
    from .complexity import count_gmacs, count_params
    from .models._cfg import hub_id

    out_dir = os.path.abspath(os.fspath(out_dir))
    source = os.path.abspath(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else None
    check_not_a_link(out_dir)
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):  # the checkpoint itself, say
        raise FileExistsError(f'{out_dir} exists and is not a folder; choose another --out')
    # the real paths: through a symbolic link the checkpoint can lie inside the folder that replacing deletes
    if source is not None and os.path.commonpath([os.path.realpath(source), os.path.realpath(out_dir)]) == \
            os.path.realpath(out_dir):
        raise ValueError(f'the checkpoint {source} is inside the output folder {out_dir}; choose another --out')
    check_outside_cwd(out_dir)
    if os.path.lexists(out_dir):
        if not force:
            raise OutputExistsError(f'{out_dir} already exists; pass {{force}} to replace it')

    state = load_original(checkpoint)
    if arch in SEG_ORIGINALS or (arch is None and _is_segmentation(state)):
        return _export_segmentation(state, arch, out_dir, source)
    arch = arch or infer_arch(state)
    model = from_original(state, arch)
    spec = ORIGINALS[arch]
    num_classes = num_classes_of(state, arch)
    tag = release_tag(arch, num_classes)
    repo_id = hub_id(f'{spec.model}.{tag}') if tag else None
    params = count_params(model)

    model_config: Dict[str, Any] = {}
    if tag == 'in1k':
        info = timm.data.ImageNetInfo()
        model_config.update(label_names=info.label_names(), label_descriptions=info.label_descriptions(as_dict=True))
    elif model.pretrained_cfg.get('label_names'):
        model_config.update(label_names=list(model.pretrained_cfg['label_names']))

    with staged_dir(out_dir) as tmp:
        save_for_hf(model, tmp, model_config=model_config, model_args=dict(spec.model_args), safe_serialization=True)
        card = model_card(
            spec, arch, tag, repo_id, params=params, gmacs=count_gmacs(model), num_classes=num_classes,
            source_name=os.path.basename(source) if source else None,
            source_sha256=sha256_file(source) if source else None)
        with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as f:
            f.write(card)
    return Export(out_dir, arch, spec.model, tag, repo_id, params, num_classes)


# paper Table 5 (PASCAL VOC val mIoU %): original arch -> (row, original model, Elastic model)
TABLE5 = {
    'resnext50': ('ResNeXt50*', 75.29, 77.70), 'resnext101': ('ResNeXt101*', 77.47, 78.51),
    'dla60x': ('DLA-X60*', 69.96, 73.59),
}


def _is_segmentation(state: Mapping[str, Any]) -> bool:
    from .convert import _SEG_MARKS
    return any(k in state for k in _SEG_MARKS)


def _export_segmentation(state: Mapping[str, Any], arch: Optional[str], out_dir: str,
                         source: Optional[str]) -> Export:
    """`export_original` for a released segmentation model: config.json, model.safetensors, README.md."""
    import json

    from safetensors.torch import save_file

    from .tasks.segmentation import VOC_CLASSES
    model = from_original(state, arch)
    if arch is None:
        arch = next(a for a, name in SEG_ORIGINALS.items() if name == model.name)
    params = sum(p.numel() for p in model.parameters())
    config = dict(architecture=SEG_ORIGINALS[arch], num_classes=model.num_classes, original_arch=arch,
                  output=model.output_description)
    if model.num_classes == len(VOC_CLASSES):
        config['label_names'] = list(VOC_CLASSES)
    with staged_dir(out_dir) as tmp:
        with open(os.path.join(tmp, 'config.json'), 'w', encoding='utf-8') as f:
            json.dump(config, f, indent=2)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(tmp, 'model.safetensors'))
        with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as f:
            f.write(_segmentation_card(arch, config, params, source))
    return Export(out_dir, arch, SEG_ORIGINALS[arch], None, None, params, model.num_classes)


def _segmentation_card(arch: str, config: Dict[str, Any], params: int, source: Optional[str]) -> str:
    import timm
    from . import __version__
    base = arch[len('seg_'):]
    elastic = base.endswith('_elastic')
    row = TABLE5.get(base[:-len('_elastic')] if elastic else base)
    name = config['architecture']
    lines = [
        '---', 'tags:', '- image-segmentation', '- timm-elastic', 'license: apache-2.0', 'datasets:', '- pascal-voc',
        '---', f'# Model card for {name}', '',
        f'The authors\' PASCAL VOC segmentation model `deeplab_{base}_pascal_v3_original_epoch50.pth` of the '
        f'original ELASTIC code (`segment.py -a {base}`), converted to `timm_elastic.segmentation` `{name}` by '
        'timm-elastic. The converted model gives the original implementation\'s outputs (fp32 rounding aside).', '',
        '## Model details',
        f'- **Architecture:** `{name}`; original `{base}` ({"DLA-up" if "dla" in base else "DeepLabV3"} head)',
        f'- **Output:** {config["output"]}',
        f'- **Params (M):** {params / 1e6:.2f}',
        f'- **Classes:** {config["num_classes"]}'
        + (' (PASCAL VOC, background first)' if 'label_names' in config else ''),
        '- **Paper:** [ELASTIC: Improving CNNs with Dynamic Scaling Policies](https://arxiv.org/abs/1812.05262)',
        '- **Original:** https://github.com/allenai/elastic', '',
        '## Results in the paper',
    ]
    if row is not None:
        label, original, with_elastic = row
        lines += ['Table 5 (PASCAL VOC val, mIoU %):', '', '| model | original | Elastic |', '|---|---|---|',
                  f'| {label} | {original:.2f} | {with_elastic:.2f} |', '',
                  f'These weights are the {"Elastic" if elastic else "original"} column\'s. These are the paper\'s '
                  'numbers, not measured on the converted model.']
    else:
        lines += ['The paper reports no result for these weights.']
    lines += ['', '## Provenance',
              f'- converted from `{os.path.basename(source)}` (sha256 `{sha256_file(source)}`)' if source
              else '- converted from a state dict given in memory',
              f'- converter: timm-elastic {__version__} (timm {timm.__version__}, '
              f'torch {torch.__version__.split("+")[0]})',
              '', '## Usage', '```python', 'from timm_elastic.segmentation import create_model', '',
              "model = create_model('local-dir:PATH/TO/THIS/FOLDER').eval()", '```',
              '', '## Citation', '```bibtex', _CITATION, '```', '']
    return '\n'.join(lines)


def model_card(
        spec: Original,
        arch: str,
        tag: Optional[str],
        repo_id: Optional[str],
        params: int,
        gmacs: float,
        source_name: Optional[str] = None,
        source_sha256: Optional[str] = None,
        num_classes: Optional[int] = None,
) -> str:
    """The README.md of a converted checkpoint: metadata header, the paper's results for these weights
    (Table 2 for ImageNet, Table 3 for the MS COCO fine-tune), provenance and usage. `tag` None: a
    checkpoint of the original code that is none of the authors' releases (`convert.release_tag`: a user's own
    fine-tune, an architecture they released no weights of): no dataset and no paper result are claimed for it."""
    import timm
    from . import __version__
    from .models._cfg import TAGS, release_url

    coco = tag == 'coco'
    name = f'{spec.model}.{tag}' if tag else spec.model
    if tag is None:
        releases = '; '.join(f'{_DATASETS[t]}, {TAGS[t].get("num_classes", 1000)} classes' for t in spec.released)
        what = (f'A checkpoint of the original ELASTIC `{arch}` code (Wang et al., CVPR 2019) with '
                f'{num_classes if num_classes is not None else "an unknown number of"} classes, not one of the '
                "authors' releases (" + (f'their releases of `{arch}`: {releases}' if releases else
                                         f'they released no weights of `{arch}`') +
                f"), converted to timm's `{spec.model}` by timm-elastic. ")
        dataset = 'not known to the converter'
    else:
        what = (f'The authors\' {"MS COCO multi-label fine-tune" if coco else "ImageNet-1k weights"} of the '
                f'original ELASTIC `{arch}` (Wang et al., CVPR 2019), converted to timm\'s `{spec.model}` by '
                'timm-elastic. ')
        dataset = 'MS COCO 2014 (train2014), fine-tuned from ImageNet-1k' if coco else 'ImageNet-1k'
    lines = [
        '---',
        'tags:', '- image-classification', '- timm', '- timm-elastic',
        'library_name: timm',
        'license: apache-2.0',
        *(['datasets:', f'- {"coco" if coco else "imagenet-1k"}'] if tag is not None else []),
        '---',
        f'# Model card for {name}',
        '',
        what +
        'The converted model gives the original implementation\'s outputs (fp32 rounding aside).'
        + (' The original DenseNet code decides from the feature size whether a dense layer is Elastic (not at '
           '7x7), so at inputs other than 224x224 its last dense block changes; this model keeps the network of '
           '224x224 at every size.' if arch == 'densenet201_elastic' else ''),
        '',
        '## Model details',
        f'- **Model type:** image classification{" (multi-label, 80 MS COCO categories, sigmoid outputs)" if coco else ""}'
        ' / feature backbone',
        f'- **Architecture:** timm `{spec.model}`; original code `{arch}` (`-a {arch}` of its scripts)',
        f'- **Params (M):** {params / 1e6:.2f}',
        f'- **GMACs:** {gmacs:.2f} (224 x 224)',
        '- **Paper:** [ELASTIC: Improving CNNs with Dynamic Scaling Policies](https://arxiv.org/abs/1812.05262)',
        '- **Original:** https://github.com/allenai/elastic',
        f'- **Dataset:** {dataset}',
        '',
        '## Results in the paper',
    ]
    if coco and spec.coco:
        row, f1c, f1o = spec.coco
        lines += ['Table 3 (MS COCO val2014, 224 x 224, labels with probability > 0.5):', '',
                  '| model | F1 per class | F1 overall |', '|---|---|---|', f'| {row} | {f1c:.2f} | {f1o:.2f} |']
    elif tag == 'in1k' and spec.imagenet:
        row, top1, top5 = spec.imagenet
        top5 = f'{top5:.2f}' if top5 is not None else '-'
        lines += ['Table 2 (ImageNet val, single 224 x 224 crop), error rates in %:', '',
                  '| model | top-1 error | top-5 error |', '|---|---|---|', f'| {row} | {top1:.2f} | {top5} |']
        if arch == 'dla102x':
            lines += ['', 'Table 2 quotes DLA-X102 from the DLA paper; it has no row for the authors\' own model.']
    else:
        lines += ['The paper reports no result for these weights.']
    lines += ['', 'These are the paper\'s numbers, not measured on the converted model.', '', '## Provenance']
    if source_name:
        lines += [f'- converted from `{source_name}` (sha256 `{source_sha256}`)']
    else:
        lines += ['- converted from a state dict given in memory']
    released = tag in spec.released
    lines += [
        f'- released by the authors: {release_url(arch, tag)}' if released
        else '- no released checkpoint of this architecture and tag',
        f'- converter: timm-elastic {__version__} (timm {timm.__version__}, torch {torch.__version__.split("+")[0]})',
    ]
    if repo_id:
        lines += [f'- Hub repository: `{repo_id}`']
    usage_name = f'hf-hub:{repo_id}' if repo_id else 'local-dir:PATH/TO/THIS/FOLDER'
    lines += [
        '', '## Usage', '```python', 'import timm', 'import timm_elastic  # registers the ELASTIC models', '',
        f"model = timm.create_model('{usage_name}', pretrained=True).eval()",
        'config = timm.data.resolve_data_config({}, model=model)',
        'transform = timm.data.create_transform(**config)',
        '```',
    ]
    if coco:
        lines += ['Outputs are independent logits per category; `torch.sigmoid(logits) > 0.5` gives the labels.']
    lines += ['', '## Citation', '```bibtex', _CITATION, '```', '']
    return '\n'.join(lines)
