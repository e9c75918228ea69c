"""A Hugging Face cache with the converted stand-in releases, as `huggingface_hub` leaves a download:
what lets tests load `pretrained=True` by tag and `hf-hub:` ids without network (HF_HUB_OFFLINE=1)."""
import hashlib
import os
import shutil
import tempfile
from typing import List

import timm
import torch

import timm_elastic
from timm_elastic.convert import original_of
from timm_elastic.hub import sha256_file
from timm_elastic.models._cfg import TAGS, hub_id

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


def cache_every_release(hub_cache: str) -> List[str]:
    """Export the stand-in of every registered pretrained tag (`model.in1k`, `model.coco`) with
    `timm-elastic`'s exporter and put it in `hub_cache`; returns the repository ids."""
    repos = []
    ours = set(timm_elastic.list_models())
    for name in timm.list_pretrained():
        model, tag = name.split('.', 1)
        if model not in ours:
            continue
        arch = original_of(model)
        with tempfile.TemporaryDirectory() as tmp:
            state = stand_in_state(arch, num_classes=TAGS[tag].get('num_classes', 1000))
            ckpt = os.path.join(tmp, f'{arch}.pth.tar')
            torch.save(as_release(state), ckpt)
            timm_elastic.export_original(ckpt, os.path.join(tmp, name), arch=arch)
            put_in_hf_cache(os.path.join(tmp, name), hub_id(name), hub_cache, move=True)
        repos.append(hub_id(name))
    return repos
