"""The authors' released checkpoints (allenai/elastic) -> timm models, exactly.

The original code saves `{'state_dict': {'module.<key>': tensor}, 'optimizer': ..., 'epoch': ...}`.
Its layout differs from ours in four ways, each handled by one rule of `convert_state_dict`:

1. Two paths per block. An original bottleneck / dense layer is saved as two paths, `conv1..` and
   `conv1_d..` (`bn*_d`, `norm2_d`). Where our block is Elastic they are `elastic.high` and
   `elastic.low`. Where it is plain (stride-2 blocks, the last stage; every block of the original
   ResNeXt50 / ResNeXt101) both paths ran at full resolution, so they are one wider block: the two
   tensors are concatenated along the dimension that the target's shape says, i.e. channels for
   every layer but the paths' last convolution, whose outputs were summed (its input channels).
   The original DLA-X and DenseNet baselines have a single path (no `_d` keys).
2. Renames: `selayer.conv1/2` -> `se.fc1/2` (SE-ResNeXt), `features.norm_final` -> `features.norm5`.
3. DLA: the projection the original builds in every tree deeper than one level is never used
   (models/dla.py); its `project.*` keys are dropped.
4. The `module.` prefix of DataParallel, and the `state_dict` wrapper.

Which model a checkpoint is for follows from its keys and shapes: it is the one original
architecture whose model the state dict converts to with every key used and every shape right.
"""
import logging
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    'Original', 'ORIGINALS', 'SEG_ORIGINALS', 'CheckpointError', 'error_line', 'load_original', 'convert_state_dict',
    'infer_arch', 'num_classes_of', 'original_of', 'from_original', 'release_tag', 'release_pretrained_cfg',
    'checkpoint_filter_fn',
]

_logger = logging.getLogger(__name__)

Shapes = Mapping[str, Tuple[int, ...]]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the architecture it is loaded into."""


def error_line(error: BaseException) -> str:
    """An exception as one line for a message: its type and the first line of its text."""
    text = str(error).strip()
    return f'{type(error).__name__}: {text.splitlines()[0]}' if text else type(error).__name__


@dataclass(frozen=True)
class Original:
    """One architecture of the original code (`classify.py -a NAME`) and the timm model it becomes.

    model: the timm model name (ours, or timm's own for three of the baselines).
    two_path: the original saves each block as two paths, `conv*` and `conv*_d`: every ResNeXt, and
        the Elastic DLA-X / DenseNet. The DLA-X and DenseNet baselines have one path.
    model_args: model kwargs that reproduce the original's outputs exactly (DLA's fixed 7x7 head).
    imagenet: (row of paper Table 2, top-1 error, top-5 error or None).
    coco: (row of paper Table 3, F1 per class, F1 overall), for the MS COCO fine-tune.
    released: the pretrained tags the authors released weights for.
    """
    model: str
    two_path: bool
    model_args: Tuple[Tuple[str, Any], ...] = ()
    imagenet: Optional[Tuple[str, float, Optional[float]]] = None
    coco: Optional[Tuple[str, float, float]] = None
    released: Tuple[str, ...] = ('in1k', 'coco')


_DLA_HEAD = (('head_window', 7),)  # the original DLA head: AvgPool2d(7), see models/dla.py

ORIGINALS: Dict[str, Original] = {
    'resnext50': Original(
        'resnext50_32x4d', True, imagenet=('ResNeXt50*', 22.23, 6.25), coco=('ResNeXt50*', 70.12, 74.52)),
    'resnext50_elastic': Original(
        'resnext50_elastic', True, imagenet=('ResNeXt50+Elastic', 21.56, 5.83),
        coco=('ResNeXt50+Elastic', 71.08, 75.37)),
    'se_resnext50_elastic': Original(
        'seresnext50_elastic', True, imagenet=('SE-ResNeXt50+Elastic', 21.38, 5.86), released=('in1k',)),
    'resnext101': Original(
        'resnext101_32x4d', True, imagenet=('ResNeXt101*', 21.18, 5.83), coco=('ResNeXt101*', 70.95, 75.21)),
    'resnext101_elastic': Original(
        'resnext101_elastic', True, imagenet=('ResNeXt101+Elastic', 20.83, 5.41),
        coco=('ResNeXt101+Elastic', 71.83, 75.93)),
    'dla60x': Original(
        'dla_x60', False, _DLA_HEAD, imagenet=('DLA-X60*', 21.92, 6.03), coco=('DLA-X60*', 70.79, 75.41)),
    'dla60x_elastic': Original(
        'dla_x60_elastic', True, _DLA_HEAD, imagenet=('DLA-X60+Elastic', 21.25, 5.71),
        coco=('DLA-X60+Elastic', 71.35, 75.77)),
    # Table 2's DLA-X102 row is the DLA paper's number; the paper has no row for the authors' own
    'dla102x': Original('dla_x102', False, _DLA_HEAD, imagenet=('DLA-X102', 21.5, None), released=('in1k',)),
    # not released; the original code builds it (cardinality 50)
    'dla102x_elastic': Original(
        'dla_x102_elastic', True, _DLA_HEAD, imagenet=('DLA-X102+Elastic', 20.71, 5.38), released=()),
    'densenet201': Original(
        'densenet201', False, imagenet=('DenseNet201*', 22.25, 6.26), coco=('DenseNet201*', 69.95, 74.50)),
    'densenet201_elastic': Original(
        'densenet201_elastic', True, imagenet=('DenseNet201+Elastic', 22.07, 6.00),
        coco=('DenseNet201+Elastic', 70.40, 74.99)),
}

# the released PASCAL VOC segmentation models (segment.py, `deeplab_<arch>_pascal_v3_original_epoch50.pth`):
# seg_<original arch> -> the `timm_elastic.segmentation` model it becomes (its backbone: ORIGINALS[<arch>])
SEG_ORIGINALS: Dict[str, str] = {
    **{f'seg_{a}': f'deeplabv3_{ORIGINALS[a].model}' for a in ('resnext50', 'resnext50_elastic', 'resnext101',
                                                               'resnext101_elastic')},
    **{f'seg_{a}': f'dlaup_{ORIGINALS[a].model}' for a in ('dla60x', 'dla60x_elastic')},
}
# the keys that tell a segmentation release (DeepLab's head, DLA-up's decoder)
_SEG_MARKS = ('aspp.aspp1.weight', 'dla_up.ida_0.node_1.0.weight')
_SEG_UNUSED = 'base.fc.'  # the original DLASeg's backbone keeps its ImageNet classifier, which it never runs

# rule 2: original name -> ours (applied to whole dotted components)
_RENAMES = (
    (re.compile(r'(^|\.)selayer\.conv([12])\.'), r'\1se.fc\2.'),
    (re.compile(r'^features\.norm_final\.'), 'features.norm5.'),
)
# rule 1: `<block>.<layer><i>[_d].<param>` of a two-path block
_PATH_KEY = re.compile(r'^(?P<block>.+)\.(?P<layer>conv|bn|norm)(?P<index>\d)(?P<low>_d)?\.(?P<param>[^.]+)$')
# rule 3
_PROJECT_KEY = re.compile(r'^(?P<tree>level\d(?:\.tree[12])*)\.project\.')
_SHOW = 5  # keys named per problem in an error message


def _few(keys: Sequence[str]) -> str:
    keys = list(keys)
    shown = ', '.join(keys[:_SHOW])
    return shown + (f' and {len(keys) - _SHOW} more' if len(keys) > _SHOW else '')


def _shape(t: Any) -> Tuple[int, ...]:
    return tuple(t.shape)


# ---------------------------------------------------------------------------------------- reading

def load_original(checkpoint: Union[str, os.PathLike, Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
    """A checkpoint as a flat state dict: `checkpoint` is a path (`.pth.tar` / `.pth`, or
    `.safetensors`) or an already loaded dict, with or without the `state_dict` wrapper and the
    `module.` prefix. Files are read with `torch.load(weights_only=True)`: nothing in them runs.

    Raises FileNotFoundError for a missing path and CheckpointError for a file that is not a
    readable checkpoint or holds no state dict.
    """
    from timm.models import clean_state_dict

    where = 'the given dict'
    if isinstance(checkpoint, (str, os.PathLike)):
        where = os.fspath(checkpoint)
        checkpoint = _read(where)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'{where} holds a {type(checkpoint).__name__}, not a checkpoint dict')
    state = checkpoint
    for key in ('state_dict', 'model'):  # the original's wrapper (and timm's); other trainers use 'model'
        if isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or not_tensors:
        top = ', '.join(map(str, list(checkpoint)[:8]))
        raise CheckpointError(
            f'{where} holds no state dict (a mapping of names to tensors under "state_dict", or at the top '
            f'level); its top-level keys are: {top or "(none)"}')
    return clean_state_dict(dict(state))


def _read(path: str) -> Any:
    if not os.path.exists(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if os.path.isdir(path):
        raise CheckpointError(f'{path} is a directory; give the checkpoint file (e.g. resnext50_elastic.pth.tar)')
    kind = _file_kind(path)
    if kind == 'safetensors':  # by its content, whatever the name says
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f'{path} is not a readable safetensors file: {e}') from None
    if kind not in ('zip', 'pickle'):
        raise CheckpointError(f'{path} is {kind}, not a PyTorch or safetensors checkpoint')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch reports a damaged file with whatever its parser hit first
        text = str(e).strip()
        reason = error_line(e).split('. ')[0]  # torch's zip errors go on for sentences
        size = os.path.getsize(path)
        if (kind == 'zip' and not _has_zip_end(path)) or (
                kind == 'pickle' and (isinstance(e, EOFError) or 'unexpected EOF' in text)):
            raise CheckpointError(
                f'{path} is a truncated PyTorch checkpoint: it ends after {size} bytes, before its '
                f'{"zip archive" if kind == "zip" else "data"} does ({reason}); download it again') from None
        if isinstance(e, pickle.UnpicklingError) and text.startswith('Weights only load failed'):
            refused = next((ln.strip() for ln in text.splitlines() if 'global' in ln.lower()), 'unsupported object')
            raise CheckpointError(
                f'{path} contains pickled objects other than tensors and plain containers, so it was not '
                f'loaded (checkpoints are read with weights_only=True and never run code): {refused}') from None
        raise CheckpointError(f'{path} is a damaged PyTorch checkpoint ({reason})') from None


def _file_kind(path: str) -> str:
    """What the file's first bytes say it is: 'zip' (torch.save since PyTorch 1.6), 'pickle' (the
    legacy torch.save format of the original code's PyTorch 0.4), 'safetensors', or a description
    of something else ('empty', 'an HTML page', 'a text file', ...)."""
    with open(path, 'rb') as f:
        head = f.read(512)
    if not head:
        return 'empty (0 bytes)'
    if head.startswith(b'PK\x03\x04'):
        return 'zip'
    if head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return 'pickle'
    if path.endswith('.safetensors') or head[8:9] == b'{':  # a little-endian header size, then JSON
        return 'safetensors'
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    if text is None or any(ord(c) < 32 and c not in '\t\n\r\f' for c in text):
        return f'a file of unknown format (it begins with the bytes {head[:8].hex(" ")})'
    if text.lstrip().lower().startswith(('<!doctype html', '<html')):
        return 'an HTML page (a web server\'s page in place of the file, e.g. for a moved or private file)'
    first = text.strip().splitlines()[0][:60] if text.strip() else ''
    return f'a text file (it begins {first!r})'


def _has_zip_end(path: str) -> bool:
    """Whether the file ends with a zip archive's end-of-central-directory record (in its last
    64 KiB + 22 bytes: the record and the longest comment), which a truncated archive lacks."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        f.seek(max(0, size - (1 << 16) - 22))
        return b'PK\x05\x06' in f.read()


# ------------------------------------------------------------------------------------- converting

def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def _merge(high: torch.Tensor, low: torch.Tensor, target: Tuple[int, ...]) -> Optional[torch.Tensor]:
    """Rule 1 for a plain block: the two full-resolution paths as one. The dimension is the one along
    which the two shapes add up to the target's; a step counter is the same in both paths."""
    if high.dim() == 0:
        return high if target == () else None
    if _shape(high) != _shape(low) or len(target) != high.dim():
        return None
    dims = [d for d in range(high.dim())
            if high.shape[d] + low.shape[d] == target[d]
            and all(high.shape[e] == target[e] for e in range(high.dim()) if e != d)]
    if len(dims) != 1:
        return None
    return torch.cat([high, low], dims[0])


def convert_state_dict(
        state: Mapping[str, torch.Tensor],
        target: Shapes,
        two_path: bool = True,
        any_shape: Sequence[str] = (),
) -> Dict[str, torch.Tensor]:
    """An original-layout state dict in the layout of a timm model.

    Args:
        state: the original state dict (keys without `module.`), or one already in timm's layout.
        target: the model's state dict keys -> shapes (`{k: v.shape for k, v in model.state_dict().items()}`).
        two_path: whether the original saves each block as two paths (see `Original.two_path`); when
            False, `_d` keys are not part of the architecture.
        any_shape: target keys whose shape is not checked (a classifier that is being replaced).

    Returns the converted state dict, whose keys are exactly `target`'s. Raises CheckpointError naming
    the missing, unexpected and wrongly shaped keys (a few of each).
    """
    target = {k: tuple(v) for k, v in target.items()}
    state = {_rename(k): v for k, v in state.items()}
    out: Dict[str, torch.Tensor] = {}
    unexpected: List[str] = []
    shapes: Dict[str, str] = {}  # target key -> what was found instead
    absent: List[str] = []  # original keys whose two-path partner is present
    explained = set()  # target keys not produced because of `absent`
    dropped: List[str] = []

    def put(key: str, value: torch.Tensor) -> None:
        if key in any_shape or _shape(value) == target[key]:
            out[key] = value
        else:
            shapes[key] = str(list(value.shape))

    for key, value in state.items():
        m = _PATH_KEY.match(key) if two_path else None
        if m is not None:
            block, layer, index, low, param = m.group('block', 'layer', 'index', 'low', 'param')
            high_key, low_key = f'{block}.{layer}{index}.{param}', f'{block}.{layer}{index}_d.{param}'
            if not low and low_key not in state:
                m = None  # a layer both paths share (bn3, norm1)
        if m is None:
            if key in target:
                put(key, value)
                continue
        else:
            name = f'{layer}{index}.{param}'
            branch = f'{block}.elastic.{"low" if low else "high"}.{name}'
            if branch in target:  # an Elastic block: the two paths are its two resolutions
                put(branch, value)
                continue
            merged = f'{block}.{name}'
            if merged in target:  # a plain block: both paths at full resolution, concatenated
                if low:
                    if high_key not in state:  # name the original key that is missing
                        absent.append(high_key)
                        explained.add(merged)
                    continue  # else merged with its high-resolution partner
                value = _merge(state[high_key], state[low_key], target[merged])
                if value is None:
                    shapes[merged] = (f'{list(state[high_key].shape)} + {list(state[low_key].shape)} '
                                      f'in {high_key} / {low_key}')
                else:
                    out[merged] = value
                continue
        m = _PROJECT_KEY.match(key)
        if m is not None:
            tree = m.group('tree')
            deeper = any(k.startswith(tree + '.tree1.') for k in target)
            if deeper and not any(k.startswith((tree + '.root.', tree + '.project.')) for k in target):
                dropped.append(key)  # rule 3: built, run and discarded by the original
                continue
        unexpected.append(key)

    missing = absent + [k for k in target if k not in out and k not in shapes and k not in explained]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing: {_few(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected: {_few(unexpected)}')
    if shapes:
        wrong = [f'{k} (expected {list(target[k])}, found {found})' for k, found in shapes.items()]
        problems.append(f'{len(wrong)} with the wrong shape: {_few(wrong)}')
    if problems:
        raise CheckpointError('; '.join(problems))
    if dropped:
        _logger.info(f'dropped {len(dropped)} unused original DLA projection tensors ({_few(dropped)})')
    return out


# ------------------------------------------------------------------------------ which architecture

def _classifier_keys(model_name: str) -> Tuple[str, ...]:
    from timm.models import get_pretrained_cfg
    classifier = get_pretrained_cfg(model_name).classifier
    return (f'{classifier}.weight', f'{classifier}.bias')


def num_classes_of(state: Mapping[str, torch.Tensor], arch: str) -> int:
    """The number of classes of an original state dict of `arch`: its classifier's outputs, or
    ImageNet's 1000 if it has no classifier (conversion then names the classifier as missing)."""
    tensor = state.get(_classifier_keys(ORIGINALS[arch].model)[0])  # `fc` / `classifier`, named as ours
    return int(tensor.shape[0]) if tensor is not None and tensor.dim() >= 1 else 1000


def _shapes(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@lru_cache(maxsize=None)
def _target_shapes(model_name: str, num_classes: int) -> Dict[str, Tuple[int, ...]]:
    import timm
    with torch.device('meta'):  # shapes only: nothing is allocated or initialised
        model = timm.create_model(model_name, num_classes=num_classes)
    return _shapes(model)


def _check(state: Mapping[str, torch.Tensor], arch: str) -> Optional[str]:
    """None if `state` is a checkpoint of the original `arch`, else why not."""
    spec = ORIGINALS[arch]
    try:
        convert_state_dict(state, _target_shapes(spec.model, num_classes_of(state, arch)), spec.two_path)
    except CheckpointError as e:
        return str(e)
    return None


def infer_arch(state: Mapping[str, torch.Tensor]) -> str:
    """The original architecture name of a state dict (keys without `module.`): the one whose model
    it converts to exactly. Raises CheckpointError if none or several fit."""
    if not {_stem(spec.model) for spec in ORIGINALS.values()} & set(state):
        raise CheckpointError(
            f'not a checkpoint of the original ELASTIC code: it has none of the stems of its families '
            f'(ResNeXt conv1, DLA base_layer, DenseNet features.conv0); first keys: {_few(list(state))}')
    why = {arch: _check(state, arch) for arch, spec in ORIGINALS.items() if _stem(spec.model) in state}
    fits = [a for a, reason in why.items() if reason is None]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise CheckpointError(f'the checkpoint fits several original architectures ({", ".join(fits)}); pass arch=')
    closest = min(why, key=lambda a: len(why[a]))
    raise CheckpointError(
        f'the checkpoint matches no original ELASTIC architecture ({", ".join(ORIGINALS)}); closest is '
        f'{closest}: {why[closest]}')


def _layout_hint(state: Mapping[str, torch.Tensor], arch: str) -> str:
    """' (its key layout is that of OTHER)' for a checkpoint of another original architecture than `arch`, else
    '' (for the message of a checkpoint that does not convert to `arch`)."""
    try:
        other = infer_arch(state)
    except CheckpointError:
        return ''
    return f' (its key layout is that of {other})' if other != arch else ''


def _stem(model_name: str) -> str:
    from timm.models import get_pretrained_cfg
    return get_pretrained_cfg(model_name).first_conv + '.weight'


def original_of(model_name: str) -> Optional[str]:
    """The original architecture whose released weights `model_name` holds (None if none)."""
    return next((a for a, spec in ORIGINALS.items() if spec.model == model_name), None)


# ------------------------------------------------------------------------------------------- loading

def from_original(
        checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
        arch: Optional[str] = None,
        **create_kwargs,
) -> nn.Module:
    """The timm model of an original ELASTIC checkpoint, with its weights, in eval mode.

    Args:
        checkpoint: a path to an original `<arch>.pth.tar` / `coco_<arch>.pth.tar`, or its loaded dict
            (with or without the `state_dict` wrapper and the `module.` prefix).
        arch: the original architecture name (`ORIGINALS`, e.g. 'dla60x_elastic', or `SEG_ORIGINALS`, e.g.
            'seg_resnext50_elastic' for a released PASCAL VOC DeepLabV3); inferred from the keys when omitted.
        **create_kwargs: passed to `timm.create_model` (for a segmentation release: `num_classes`,
            `bn_momentum` and `backbone_kwargs` of `timm_elastic.segmentation.create_model`, the other keyword
            arguments to its backbone's `timm.create_model`). By default the model is built as the original
            computes (DLA: `head_window=7`) with the checkpoint's number of classes; a different
            `num_classes` keeps every weight but the classifier, with a warning (for fine-tuning).

    Every tensor is loaded strictly (only the original DLA's unused projections are dropped) and the
    model's `pretrained_cfg` is that of the release (`<model>.in1k` / `.coco`). A segmentation release
    becomes a `timm_elastic.segmentation` model (DeepLabV3 or DLASeg) whose forward returns what the original's
    does. Raises
    CheckpointError if the checkpoint is not one of `arch`.
    """
    import timm

    if 'pretrained' in create_kwargs or 'pretrained_cfg_overlay' in create_kwargs:
        raise TypeError('from_original loads the checkpoint itself; do not pass pretrained / pretrained_cfg_overlay')
    state = load_original(checkpoint)
    if arch in SEG_ORIGINALS or (arch is None and any(k in state for k in _SEG_MARKS)):
        return _seg_from_original(state, arch, **create_kwargs)
    if arch is None:
        arch = infer_arch(state)
    elif arch not in ORIGINALS:
        raise ValueError(f'unknown original architecture {arch!r}; known: {", ".join([*ORIGINALS, *SEG_ORIGINALS])}')
    spec = ORIGINALS[arch]
    num_classes = num_classes_of(state, arch)
    kwargs = dict(spec.model_args, num_classes=num_classes)
    kwargs.update(create_kwargs)
    model = timm.create_model(spec.model, **kwargs)
    target = _shapes(model)
    _refuse_timm_layout(state, target, spec.model, f'timm.create_model({spec.model!r}, checkpoint_path=PATH)')
    classifier = _classifier_keys(spec.model)
    replace_head = model.num_classes != num_classes
    try:
        converted = convert_state_dict(state, target, spec.two_path, any_shape=classifier if replace_head else ())
    except CheckpointError as e:
        hint = _layout_hint(state, arch) if create_kwargs.get('num_classes') is None else ''
        raise CheckpointError(f'not a checkpoint of {arch} ({spec.model}){hint}: {e}') from None
    _load_converted(model, converted, num_classes, classifier, stacklevel=3)
    tag = release_tag(arch, num_classes)
    if tag is not None and not replace_head:
        model.pretrained_cfg = release_pretrained_cfg(spec.model, tag)
    elif tag is None:  # not a release: timm's default cfg would name the ImageNet release's tag and URL
        model.pretrained_cfg = dict(model.pretrained_cfg, tag=None, url='', num_classes=model.num_classes,
                                    description=f'{model.pretrained_cfg.get("description", spec.model)}, converted '
                                                f'from an original checkpoint of {num_classes} classes (not a release)')
    return model.eval()


def _refuse_timm_layout(state: Mapping[str, torch.Tensor], target: Shapes, model_name: str, load: str) -> None:
    """CheckpointError if `state` is already in the layout of the timm model `model_name` (its keys `target`'s):
    a timm or converted checkpoint, which conversion would pass through unchanged and label the authors'. Every
    original has keys that timm's layout lacks: the second path (`conv1_d`, ...), DenseNet's `norm_final`, the
    DLA projections that the original builds and never uses, the segmentation DLA's backbone classifier. `load`:
    how to load it instead, for the message."""
    if set(state) <= set(target):
        raise CheckpointError(
            f"the checkpoint is in timm's layout already (every key is one of {model_name}'s), not in the original "
            f"ELASTIC code's: it is no release of the authors' to convert; load it as it is ({load})")


def _seg_convert(state: Mapping[str, torch.Tensor], arch: str, model: nn.Module,
                 any_shape: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """A segmentation release's state dict in `model`'s layout: the backbone's part converted as the
    ImageNet model of its architecture is (the original holds DeepLab's backbone modules at the top level and
    DLASeg's under `base.`, as ours does), the head's / decoder's keys as they are. `any_shape`: head keys whose
    shape is not checked (a classifier that is being replaced)."""
    prefix = 'backbone.' if hasattr(model, 'backbone') else 'base.'
    shapes = _shapes(model)
    target = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in shapes.items()}
    if prefix == 'base.':
        state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()
                 if not k.startswith(_SEG_UNUSED)}
    converted = convert_state_dict(state, target, ORIGINALS[arch[len('seg_'):]].two_path, any_shape=any_shape)
    return {(prefix + k if prefix + k in shapes else k): v for k, v in converted.items()}


def _seg_from_original(state: Mapping[str, torch.Tensor], arch: Optional[str], num_classes: Optional[int] = None,
                       bn_momentum: Optional[float] = None, backbone_kwargs: Optional[Dict[str, Any]] = None,
                       **kwargs) -> nn.Module:
    """`from_original` for a released segmentation model (`SEG_ORIGINALS`): the `timm_elastic.segmentation`
    model whose forward is the original's (DeepLab: logits at the input size; DLA-up: log-probabilities,
    cropped), every tensor loaded strictly (but DLASeg's unused backbone classifier and DLA projections).

    `num_classes`, `bn_momentum` and `backbone_kwargs` are `segmentation.create_model`'s; any other keyword
    argument joins `backbone_kwargs` (the backbone's `timm.create_model` arguments). A
    `num_classes` other than the release's keeps every weight but the final classifier convolution's (DeepLabV3's
    `aspp.conv3`, DLA-up's `fc.0`, and DLA-up's fixed bilinear `up`, which has one kernel per class), with a
    warning, for fine-tuning."""
    from .segmentation import DLASeg, create_model
    if 'pretrained_backbone' in kwargs:
        raise TypeError('from_original loads the checkpoint itself; do not pass pretrained_backbone')
    head = state.get('aspp.conv3.weight', state.get('fc.0.weight'))
    release_classes = int(head.shape[0]) if head is not None and head.dim() == 4 else 21
    options = dict(backbone_kwargs={**(backbone_kwargs or {}), **kwargs} or None, bn_momentum=bn_momentum)

    def build(a: str, classes: int, **opts) -> nn.Module:
        try:
            return create_model(SEG_ORIGINALS[a], num_classes=classes, **opts)
        except TypeError as e:
            if 'unexpected keyword argument' not in str(e):
                raise
            backbone = ORIGINALS[a[len('seg_'):]].model
            raise TypeError(f'from_original of a segmentation release takes num_classes, bn_momentum, backbone_kwargs '
                            f'and the keyword arguments of its backbone\'s timm.create_model({backbone!r}): {e}'
                            ) from None

    if arch is None:
        why = {}
        for a in SEG_ORIGINALS:
            with torch.device('meta'):  # shapes only, of the release (the options may not apply to every backbone)
                candidate = build(a, release_classes)
            try:
                _seg_convert(state, a, candidate)
            except CheckpointError as e:
                why[a] = str(e)
        fits = [a for a in SEG_ORIGINALS if a not in why]
        if len(fits) != 1:
            closest = min(why, key=lambda a: len(why[a]))
            raise CheckpointError(
                f'the segmentation checkpoint matches no released architecture ({", ".join(SEG_ORIGINALS)}); '
                f'closest is {closest}: {why[closest]}' if not fits else
                f'the checkpoint fits several segmentation architectures ({", ".join(fits)}); pass arch=')
        arch = fits[0]
    model = build(arch, release_classes if num_classes is None else num_classes, **options)
    replace_head = model.num_classes != release_classes
    _refuse_timm_layout(state, _shapes(model), SEG_ORIGINALS[arch],
                        f'timm_elastic.segmentation.create_model({SEG_ORIGINALS[arch]!r}).load_state_dict')
    classifier = (f'{model.classifier}.weight', f'{model.classifier}.bias')
    up = ('up.weight',) if isinstance(model, DLASeg) else ()  # one fixed bilinear kernel per class
    try:
        converted = _seg_convert(state, arch, model, any_shape=classifier + up if replace_head else ())
    except CheckpointError as e:
        raise CheckpointError(f'not a checkpoint of {arch}: {e}') from None
    _load_converted(model, converted, release_classes, classifier, extra=up, stacklevel=4,
                    note=f' (and up.weight, the fixed bilinear upsampling, is built for {model.num_classes} classes)'
                    if up else '')
    return model.eval()


def _load_converted(model: nn.Module, converted: Dict[str, torch.Tensor], classes: int, classifier: Sequence[str],
                    extra: Sequence[str] = (), note: str = '', stacklevel: int = 2) -> None:
    """Load a converted state dict into `model`: strictly, or, when the model has other than the checkpoint's
    `classes`, every tensor but the `classifier`'s (and `extra` ones made for the class count), with a warning
    (for fine-tuning). `stacklevel`: the warning's, as warnings.warn counts it here (2: this function's caller)."""
    if model.num_classes == classes:
        model.load_state_dict(converted, strict=True)
        return
    warnings.warn(f'the checkpoint has {classes} classes and the model {model.num_classes}: {", ".join(classifier)} '
                  f'are left newly initialised, for fine-tuning{note}', stacklevel=stacklevel)
    fresh = (*classifier, *extra)
    for k in fresh:
        converted.pop(k, None)
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= set(fresh), result


def release_tag(arch: str, num_classes: int) -> Optional[str]:
    """The pretrained tag of the authors' release that an original checkpoint of `arch` with `num_classes`
    outputs is ('in1k', 'coco'), or None where they released no weights of `arch` with that many classes
    (dla102x_elastic: none at all; se_resnext50_elastic and dla102x: ImageNet's only)."""
    from .models._cfg import TAGS
    return next((t for t, cfg in TAGS.items()
                 if cfg.get('num_classes', 1000) == num_classes and t in ORIGINALS[arch].released), None)


def release_pretrained_cfg(model_name: str, tag: str) -> Dict[str, Any]:
    """The pretrained cfg of `model.tag`: the registered one, or, for timm's own baseline
    architectures (resnext50_32x4d, ...), the same cfg built for them."""
    import timm
    from timm.models import get_pretrained_cfg
    from .models._cfg import elastic_cfg, release_cfg
    name = f'{model_name}.{tag}'
    base = get_pretrained_cfg(model_name)
    ours = release_cfg(name, elastic_cfg(base.first_conv, base.classifier))
    registered = get_pretrained_cfg(name) if name in timm.list_pretrained(name) else None
    if registered is not None and registered.url == ours.get('url', ''):  # not one of timm's own tags
        return dict(registered.to_dict(), architecture=model_name, tag=tag)
    return dict(ours, architecture=model_name, tag=tag)


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's `pretrained_filter_fn`: converts an original checkpoint on load, so that
    `timm.create_model(name, pretrained=True)` (the release URL) and `pretrained_cfg_overlay=dict(file=
    '<arch>.pth.tar')` work. timm hands over what the file holds: the original's whole checkpoint
    (`{'state_dict': ..., 'optimizer': ...}`) from a URL, the state dict alone from a file. A state dict
    already in timm's layout passes through unchanged."""
    state_dict = load_original(state_dict)
    cfg = model.pretrained_cfg
    name = cfg.get('architecture')
    target = _shapes(model)
    classifier = _classifier_keys(name)
    # timm adapts the first convolution to in_chans, and drops the classifier when num_classes differs
    # from the pretrained cfg's (0 included), after this filter
    adapting = model.num_classes != cfg.get('num_classes')
    arch = original_of(name)

    def kept(out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        weight = out.get(classifier[0])
        if adapting and model.num_classes and weight is not None and weight.dim() >= 1 \
                and weight.shape[0] == model.num_classes:  # timm drops it all the same
            tag = release_tag(arch, model.num_classes) if arch is not None else None
            warnings.warn(
                f"the checkpoint's classifier has the model's {model.num_classes} outputs, but timm replaces it with a "
                f"newly initialised one, as the pretrained cfg ({name}.{cfg.get('tag')}) has "
                f"{cfg.get('num_classes')} classes; "
                + (f'{name}.{tag} is the pretrained tag of its release and keeps it' if tag else
                   f'pretrained_cfg_overlay=dict(num_classes={model.num_classes}, ...) keeps it'), stacklevel=2)
        return out

    if all(k in target or (adapting and k in classifier) for k in state_dict):
        return kept(state_dict)  # timm's layout already (our Hub weights)
    free = [cfg['first_conv'] + '.weight'] + (list(classifier) if adapting else [])
    # every key of the model there, in its shape, beside others: timm's layout with more keys, which timm's load
    # reports (pretrained_strict=True) or leaves out (pretrained_strict=False), as for its own models
    extended = all(k in state_dict and (k in free or _shape(state_dict[k]) == shape) for k, shape in target.items())
    if arch is None:
        if extended:
            return kept(state_dict)
        missing = [k for k in target if k not in state_dict]
        raise CheckpointError(
            f'not a state dict of {name} ({len(missing)} of its keys missing, e.g. {_few(missing)}), and {name} '
            f'has no original ELASTIC architecture to convert from; models with released weights: '
            f'{", ".join(spec.model for spec in ORIGINALS.values())}')
    target.update({k: () for k in free if k not in target})
    try:
        return kept(convert_state_dict(state_dict, target, ORIGINALS[arch].two_path, any_shape=free))
    except CheckpointError as e:
        if extended:
            return kept(state_dict)
        classes = num_classes_of(state_dict, arch)
        tag = release_tag(arch, classes) if classes != model.num_classes else None
        hint = f'; its {classes} classes are those of the release {name}.{tag}' if tag else ''
        layout = '' if tag else _layout_hint(state_dict, arch)
        raise CheckpointError(f'not a checkpoint of {arch} ({name}){layout}: {e}{hint}') from None
