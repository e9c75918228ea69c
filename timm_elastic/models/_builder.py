"""How every family builds its models: timm's `build_model_with_cfg`, with the authors' checkpoints
converted on load and a failed download of them reported as one error that says what to do.

`pretrained=True` of a released tag downloads the authors' file through timm's own path
(`torch.hub.load_state_dict_from_url`, cached in `$TORCH_HOME/hub/checkpoints`, `weights_only=True`).
Where that fails (no network, a moved file, a truncated download) timm would raise whatever urllib or
torch.load hit first, deep in its loader. Here it becomes a `PretrainedWeightsError` naming the tag,
the URL and the offline route, and a download that is not a readable checkpoint is removed from the cache, so
the next call downloads it again instead of failing on it forever (a file that was in the cache before the call,
such as one the user put there, is named and left as it is).
"""
import os
import traceback
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import urlparse

import torch
from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from ..convert import CheckpointError, checkpoint_filter_fn, error_line, load_original

__all__ = ['PretrainedWeightsError', 'build_elastic']


class PretrainedWeightsError(RuntimeError):
    """The weights of a pretrained tag could not be downloaded or read. `url` is the address tried,
    `cached` the file in torch.hub's cache it was to be read from, `reason` the underlying error."""

    def __init__(self, message: str, url: str, cached: str, reason: BaseException):
        super().__init__(message)
        self.url, self.cached, self.reason = url, cached, reason


def build_elastic(model_cls: Callable, variant: str, pretrained: bool = False, **kwargs):
    """`timm.models.build_model_with_cfg(model_cls, variant, pretrained, **kwargs)` with
    `convert.checkpoint_filter_fn` as the pretrained filter. Raises PretrainedWeightsError when the
    weights of the cfg's `url` cannot be downloaded or read."""
    cached_before = _cached_download(variant, kwargs) if pretrained else None
    try:
        return build_model_with_cfg(
            model_cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
    except Exception as e:
        cfg = _pretrained_cfg(variant, kwargs) if pretrained and _raised_in_load_pretrained(e) else None
        load_from, location = _source(cfg) if cfg is not None else (None, None)
        if load_from == 'url':
            error = _download_error(variant, cfg, kwargs.get('cache_dir'), location, e, cached_before)
        elif load_from == 'file':
            error = _file_error(variant, cfg, location, e)
        else:
            error = None
        if error is None:  # not a failure to get or read the weights: timm's error as it is
            raise
    raise error  # outside the handler: the user reads this error, not urllib's or torch.load's traceback


def _raised_in_load_pretrained(error: BaseException) -> bool:
    return any(frame.f_code.co_name == 'load_pretrained' for frame, _ in traceback.walk_tb(error.__traceback__))


def _cached_download(variant: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """The file in torch.hub's cache that the weights of `variant` are read from, if it is there before timm
    reads it (downloaded by an earlier call, or put there by the user: the README's offline route)."""
    try:
        load_from, url = _source(_pretrained_cfg(variant, kwargs))
    except Exception:  # a cfg timm cannot resolve: building the model says what is wrong
        return None
    if load_from != 'url':
        return None
    cached = _cached_path(url, kwargs.get('cache_dir'))
    return cached if os.path.exists(cached) else None


def _pretrained_cfg(variant: str, kwargs: Dict[str, Any]):
    """The pretrained cfg timm built the model with, from the same create kwargs."""
    return resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                  pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))


def _source(cfg) -> Tuple[Optional[str], Any]:
    """Where timm reads the weights of `cfg` from: ('url', URL), ('file', path), or another source of timm's
    order (`timm.models._builder._resolve_pretrained_source`: a state dict, the Hub), (None, None) for a timm
    without it."""
    from timm.models import _builder
    resolve = getattr(_builder, '_resolve_pretrained_source', None)
    if resolve is None:  # another timm: leave its error as it is
        return None, None
    return resolve(cfg.to_dict())


def _file_error(variant: str, cfg, path: str, error: Exception) -> Optional[PretrainedWeightsError]:
    """For weights read from a file (`pretrained_cfg_overlay=dict(file=...)`) that is not a readable checkpoint:
    what it is, as `timm-elastic convert` says it (torch.load's error advised weights_only=False for an HTML page);
    None where the file reads (the error was the conversion's, which says what does not fit)."""
    try:
        load_original(path)
        return None
    except (CheckpointError, OSError) as e:
        name = f'{variant}.{cfg.tag}' if cfg.tag else variant
        return PretrainedWeightsError(f'could not load the pretrained weights of {name} from the file {path}: '
                                      f'{e}', '', path, error)


def _cached_path(url: str, cache_dir: Optional[str]) -> str:
    """Where torch.hub.load_state_dict_from_url keeps the download of `url`."""
    folder = os.fspath(cache_dir) if cache_dir else os.path.join(torch.hub.get_dir(), 'checkpoints')
    return os.path.join(folder, os.path.basename(urlparse(url).path))


def _download_error(variant: str, cfg, cache_dir: Optional[str], url: str, error: Exception,
                    cached_before: Optional[str] = None) -> PretrainedWeightsError:
    """`cached_before`: the cached file that was there before this call (`_cached_download`): not downloaded now,
    so not removed when it does not read (it may be the user's own copy)."""
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    cached = _cached_path(url, cache_dir)
    filename = os.path.basename(cached)
    downloaded = cached != cached_before
    origin = f'downloaded from {url}' if downloaded else f'where torch.hub keeps the download of {url}'
    if not os.path.exists(cached):
        what = f'downloading {url} failed ({error_line(error)})'
    else:
        try:
            load_original(cached)
            readable = True
        except (CheckpointError, OSError) as e:
            readable, why = False, e
        if not readable and downloaded:
            os.remove(cached)  # a half or wrong download would be read from the cache forever
            what = (f'the file downloaded from {url} is not a readable checkpoint and was removed from the cache '
                    f'({error_line(why)})')
        elif not readable:
            what = (f'{cached}, {origin}, is not a readable checkpoint ({error_line(why)}); it was there before '
                    'this call and is left as it is: replace it with the file from the URL, or delete it to download '
                    'it again')
        elif isinstance(error, CheckpointError):
            what = f'{cached} ({origin}) does not convert to {variant}: {error_line(error)}'
        else:
            what = f'loading {cached} ({origin}) failed ({error_line(error)})'
    message = (
        f'could not load the pretrained weights of {name}: {what}.\n'
        f'Without network, get {filename} from {url} on another machine, then either put it at {cached}, '
        f'where pretrained=True (and --pretrained of the timm-elastic and timm scripts) reads the download, pass it '
        f"directly, timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file='{filename}')), "
        f'or convert it once, `timm-elastic convert {filename} --out DIR`, and use '
        f"timm.create_model('local-dir:DIR', pretrained=True).")
    return PretrainedWeightsError(message, url, cached, error)
