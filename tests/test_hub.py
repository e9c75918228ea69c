"""`timm-elastic convert` and the Hub: the exported folder loads through timm's `local-dir:` and,
placed in a Hugging Face cache as its published copy, through `hf-hub:` ids and a tag whose pretrained
cfg names that copy, offline."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

from timm_elastic.hub import export_original, sha256_file

from hub_cache import offline_env, put_in_hf_cache
from original import as_release, make_input, original_forward, stand_in_state, tolerance


def convert(*args):
    exe = shutil.which('timm-elastic')
    assert exe, 'the timm-elastic console script is not installed (pip install -e .)'
    return subprocess.run([exe, 'convert', *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def release(tmp_path_factory):
    """The stand-in of the authors' dla60x_elastic.pth.tar and its Hub folder, made by the CLI."""
    root = tmp_path_factory.mktemp('release')
    state = stand_in_state('dla60x_elastic')
    ckpt = root / 'dla60x_elastic.pth.tar'
    torch.save(as_release(state), ckpt)
    digest = sha256_file(ckpt)
    proc = convert(str(ckpt), '--out', str(root / 'dla_x60_elastic.in1k'))
    assert proc.returncode == 0, proc.stderr
    assert sha256_file(ckpt) == digest  # never modified
    return dict(root=root, state=state, ckpt=ckpt, out=root / 'dla_x60_elastic.in1k', stdout=proc.stdout)


def test_convert_writes_a_hub_folder(release):
    out = release['out']
    assert sorted(os.listdir(out)) == ['README.md', 'config.json', 'model.safetensors']
    assert sorted(os.listdir(release['root'])) == ['dla60x_elastic.pth.tar', 'dla_x60_elastic.in1k']  # no temp left
    assert 'timm-elastic/dla_x60_elastic.in1k' in release['stdout']
    assert f"timm.create_model('local-dir:{out}', pretrained=True)" in release['stdout']  # else: random weights
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'dla_x60_elastic' and config['num_classes'] == 1000
    assert len(config['label_names']) == 1000 and config['label_names'][0] == 'n01440764'
    assert config['label_descriptions']['n01440764'].startswith('tench')
    assert config['model_args']['head_window'] == 7
    assert config['pretrained_cfg']['tag'] == 'in1k' and config['pretrained_cfg']['interpolation'] == 'bilinear'
    card = (out / 'README.md').read_text()
    assert card.startswith('---\n') and 'library_name: timm' in card and 'license: apache-2.0' in card
    assert '| DLA-X60+Elastic | 21.25 | 5.71 |' in card  # paper Table 2
    assert sha256_file(release['ckpt']) in card and 'arxiv.org/abs/1812.05262' in card


def test_local_dir_loads_the_original_model(release):
    model = timm.create_model(f'local-dir:{release["out"]}', pretrained=True).eval()
    assert model.head_window == 7 and model.pretrained_cfg['label_names'][0] == 'n01440764'
    x = make_input([1, 3, 256, 256])  # the original's fixed 7x7 head matters at 256
    with torch.no_grad():
        reference = original_forward('dla60x_elastic', release['state'], x)
        assert (model(x) - reference).abs().max().item() <= tolerance(reference)


def test_a_classifier_folder_given_to_the_segmentation_loader_is_named(release):
    """The segmentation loader said 'unknown segmentation model' of a classifier's folder: it says what the
    folder holds and which loader takes it."""
    from timm_elastic.segmentation import create_model
    name = f'local-dir:{release["out"]}'
    with pytest.raises(ValueError) as e:
        create_model(name)
    assert str(e.value) == (f"{name!r} holds a timm classifier (dla_x60_elastic, its config.json), not a "
                            f"segmentation model: load it with timm.create_model({name!r}, pretrained=True)")


def test_hub_copy_loads_by_hf_hub_id_offline(release, tmp_path):
    hf_home = tmp_path / 'hf'
    put_in_hf_cache(str(release['out']), 'timm-elastic/dla_x60_elastic.in1k', str(hf_home / 'hub'))
    # the user imports only timm: the installed hook registers the models (tests/test_autoload.py)
    script = textwrap.dedent('''
        import json, sys, torch, timm
        from huggingface_hub import scan_cache_dir
        assert [r.repo_id for r in scan_cache_dir().repos] == ['timm-elastic/dla_x60_elastic.in1k']
        x = torch.load(sys.argv[1])
        out = {}
        # a published copy: by its Hub id, or by tag with the id set in the pretrained cfg
        for name, overlay in (('hf-hub:timm-elastic/dla_x60_elastic.in1k', None),
                              ('dla_x60_elastic.in1k', dict(hf_hub_id='timm-elastic/dla_x60_elastic.in1k')),
                              ('dla_x60_elastic', dict(hf_hub_id='timm-elastic/dla_x60_elastic.in1k'))):
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
            with torch.no_grad():
                out[name] = model(x).tolist()
        print(json.dumps(out))
    ''')
    x = make_input([1, 3, 224, 224], seed=5)
    torch.save(x, tmp_path / 'x.pt')
    env = dict(os.environ, **offline_env(str(hf_home)))
    proc = subprocess.run([sys.executable, '-c', script, str(tmp_path / 'x.pt')], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    outputs = json.loads(proc.stdout.strip().splitlines()[-1])
    reference = original_forward('dla60x_elastic', release['state'], x)
    for name, logits in outputs.items():
        assert (torch.tensor(logits) - reference).abs().max().item() <= tolerance(reference), name


@pytest.mark.slow
def test_existing_folder_needs_force(release, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'mine.txt').write_text('keep me')
    proc = convert(str(release['ckpt']), '--out', str(out))
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip() == f'timm-elastic convert: error: {out} already exists; pass --force to replace it'
    with pytest.raises(FileExistsError, match=f'^{out} already exists; pass force=True to replace it$'):
        export_original(release['ckpt'], out)  # Python's own wording
    assert os.listdir(out) == ['mine.txt']
    proc = convert(str(release['ckpt']), '--out', str(out), '--force')
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ['README.md', 'config.json', 'model.safetensors']
    assert sorted(os.listdir(tmp_path)) == ['out']
    # the checkpoint inside the folder it would replace: refused, even with --force
    shutil.copy(release['ckpt'], out / 'dla60x_elastic.pth.tar')
    proc = convert(str(out / 'dla60x_elastic.pth.tar'), '--out', str(out), '--force')
    assert proc.returncode == 2 and 'is inside the output folder' in proc.stderr
    assert (out / 'dla60x_elastic.pth.tar').exists()
    # ... also when the path to it goes through a symbolic link to the folder
    (tmp_path / 'link').symlink_to(out)
    proc = convert(str(tmp_path / 'link' / 'dla60x_elastic.pth.tar'), '--out', str(out), '--force')
    assert proc.returncode == 2 and 'is inside the output folder' in proc.stderr
    assert (out / 'dla60x_elastic.pth.tar').exists()
    # the checkpoint file itself as --out: named as a file, not as a folder holding the checkpoint
    proc = convert(str(release['ckpt']), '--out', str(release['ckpt']), '--force')
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"timm-elastic convert: error: {release['ckpt']} exists and is not a folder; choose another --out"), proc.stderr
    # a link as --out is named as one
    proc = convert(str(release['ckpt']), '--out', str(tmp_path / 'link'), '--force')
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"timm-elastic convert: error: {tmp_path / 'link'} is a symbolic link (to {out}); name the folder itself, or "
        "another folder"), proc.stderr


def test_coco_export(tmp_path):
    ckpt = tmp_path / 'coco_dla60x.pth.tar'
    torch.save(as_release(stand_in_state('dla60x', num_classes=80)), ckpt)
    proc = convert(str(ckpt), '--arch', 'dla60x', '--out', str(tmp_path / 'out'))
    assert proc.returncode == 0, proc.stderr
    assert 'dla60x -> dla_x60.coco' in proc.stdout
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['num_classes'] == 80 and config['label_names'][:2] == ['person', 'bicycle']
    assert config['pretrained_cfg']['crop_mode'] == 'squash'
    assert '| DLA-X60* | 70.79 | 75.41 |' in (tmp_path / 'out' / 'README.md').read_text()  # paper Table 3


def test_export_of_another_class_count_is_not_labelled_a_release(tmp_path):
    # a 20-class fine-tune in the original's layout: no release tag, no release URL in its pretrained cfg
    ckpt = tmp_path / 'voc_dla60x.pth.tar'
    torch.save(as_release(stand_in_state('dla60x', num_classes=20)), ckpt)
    proc = convert(str(ckpt), '--arch', 'dla60x', '--out', str(tmp_path / 'out'))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    cfg = config['pretrained_cfg']
    assert config['num_classes'] == cfg['num_classes'] == 20 and cfg.get('tag') is None and not cfg.get('url')
    assert 'not a release' in cfg['description'] and 'label_names' not in config
    # its model card claims neither a dataset nor the paper's numbers of the ImageNet / COCO releases
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert 'datasets:' not in card and '**Dataset:** not known to the converter' in card, card
    assert "The authors'" not in card and 'ImageNet-1k weights' not in card and 'fine-tune' not in card
    assert '21.92' not in card and '70.79' not in card and 'The paper reports no result for these weights' in card
    assert "with 20 classes, not one of the authors' releases (their releases of `dla60x`: ImageNet-1k, 1000 " \
           'classes; MS COCO, 80 classes)' in card


@pytest.mark.parametrize('arch,num_classes', [('dla102x_elastic', 1000), ('se_resnext50_elastic', 80)])
def test_export_of_an_unreleased_architecture_is_not_labelled_a_release(tmp_path, arch, num_classes):
    """The authors released no dla102x_elastic weights and no MS COCO se_resnext50_elastic (allenai/elastic's README):
    a checkpoint of either, with the class count of a release, is someone else's, not theirs."""
    ckpt = tmp_path / f'{arch}.pth.tar'
    torch.save(as_release(stand_in_state(arch, num_classes=num_classes)), ckpt)
    proc = convert(str(ckpt), '--out', str(tmp_path / 'out'))
    assert proc.returncode == 0, proc.stderr
    assert 'timm-elastic/' not in proc.stdout and 'hf upload' not in proc.stdout  # no Hub repository of ours
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['pretrained_cfg'].get('tag') is None and not config['pretrained_cfg'].get('url')
    card = (tmp_path / 'out' / 'README.md').read_text()
    assert "The authors'" not in card and 'fine-tune' not in card and 'datasets:' not in card, card
    assert '20.71' not in card and '21.38' not in card and 'The paper reports no result for these weights' in card
    assert 'no released checkpoint of this architecture and tag' in card and 'Hub repository' not in card
    assert {'dla102x_elastic': "(they released no weights of `dla102x_elastic`)",
            'se_resnext50_elastic': '(their releases of `se_resnext50_elastic`: ImageNet-1k, 1000 classes)',
            }[arch] in card


def test_a_checkpoint_in_timms_layout_is_not_converted(tmp_path):
    """timm's own dla60x weights (or a converted model's) are not the authors' release of DLA-X60: converting them
    would label them so (a model card with the paper's row, a timm-elastic Hub name)."""
    ckpt = tmp_path / 'dla60x.pth'
    torch.save(timm.create_model('dla60x').state_dict(), ckpt)
    proc = convert(str(ckpt), '--out', str(tmp_path / 'out'))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "the checkpoint is in timm's layout already (every key is one of dla_x60's), not in the original ELASTIC " \
           "code's" in proc.stderr and "timm.create_model('dla_x60', checkpoint_path=PATH)" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ['dla60x.pth']


@pytest.mark.parametrize('make,args,message', [
    ('truncated', [], 'is a truncated PyTorch checkpoint: it ends after 100000 bytes'),
    ('missing', [], 'checkpoint not found'),
    ('release', ['--arch', 'resnext77'], "unknown original architecture 'resnext77'; known: resnext50"),
    ('release', ['--arch', 'densenet201_elastic'], 'not a checkpoint of densenet201_elastic (densenet201_elastic)'),
])
def test_bad_input_is_one_line(release, tmp_path, make, args, message):
    ckpt = tmp_path / 'model.pth.tar'
    if make == 'truncated':
        ckpt.write_bytes(release['ckpt'].read_bytes()[:100_000])
    elif make == 'release':
        ckpt = release['ckpt']
    proc = convert(str(ckpt), *args, '--out', str(tmp_path / 'out'))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / 'out').exists()


def test_a_failed_write_leaves_nothing(release, tmp_path, monkeypatch):
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(safetensors.torch, 'save_file', disk_full)
    with pytest.raises(OSError, match='No space left'):
        export_original(release['ckpt'], tmp_path / 'out')
    assert os.listdir(tmp_path) == []
