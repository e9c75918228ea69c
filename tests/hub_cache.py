"""Caches that let tests load pretrained weights without network: a Hugging Face cache holding a
converted folder as `huggingface_hub` leaves a download (`hf-hub:` ids, HF_HUB_OFFLINE=1), and torch.hub's
cache holding the stand-ins of the authors' releases (`pretrained=True` by tag, TORCH_HOME)."""
import hashlib
import os
import shutil
from typing import List
from urllib.parse import urlparse

import timm
import torch

import timm_elastic
from timm_elastic.convert import original_of
from timm_elastic.hub import sha256_file
from timm_elastic.models._cfg import TAGS

from original import as_release, stand_in_state


def put_in_hf_cache(folder: str, repo_id: str, hub_cache: str, move: bool = False) -> None:
    """Place the files of `folder` in the cache `hub_cache` as a download of `repo_id`: blobs named by
    content hash, a snapshot of relative symlinks to them, refs/main naming the snapshot."""
    from huggingface_hub.file_download import repo_folder_name
    repo = os.path.join(hub_cache, repo_folder_name(repo_id=repo_id, repo_type='model'))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = os.path.join(repo, 'snapshots', commit)
    os.makedirs(os.path.join(repo, 'blobs'))
    os.makedirs(snapshot)
    os.makedirs(os.path.join(repo, 'refs'))
    for name in sorted(os.listdir(folder)):
        digest = sha256_file(os.path.join(folder, name))
        (shutil.move if move else shutil.copyfile)(os.path.join(folder, name), os.path.join(repo, 'blobs', digest))
        os.symlink(os.path.join('..', '..', 'blobs', digest), os.path.join(snapshot, name))
    with open(os.path.join(repo, 'refs', 'main'), 'w') as f:
        f.write(commit)


def offline_env(hf_home: str) -> dict:
    """Environment variables under which huggingface_hub uses only the cache in `hf_home`/hub."""
    return dict(HF_HOME=hf_home, HF_HUB_CACHE=os.path.join(hf_home, 'hub'), HF_HUB_OFFLINE='1')


def cache_every_release(torch_home: str) -> List[str]:
    """The stand-in of every registered pretrained tag's release (`model.in1k`, `model.coco`), saved
    in the original layout where torch.hub keeps the download of its URL (`torch_home`/hub/checkpoints,
    named as the URL's file), so `pretrained=True` reads it with TORCH_HOME=`torch_home` and no
    network; returns the file names."""
    folder = os.path.join(torch_home, 'hub', 'checkpoints')
    os.makedirs(folder, exist_ok=True)
    names = []
    ours = set(timm_elastic.list_models())
    for name in timm.list_pretrained():
        model, tag = name.split('.', 1)
        if model not in ours:
            continue
        filename = os.path.basename(urlparse(timm.models.get_pretrained_cfg(name).url).path)
        state = stand_in_state(original_of(model), num_classes=TAGS[tag].get('num_classes', 1000))
        torch.save(as_release(state), os.path.join(folder, filename))
        names.append(filename)
    return names
