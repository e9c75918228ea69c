"""Conversion of the authors' checkpoints: exact against the original implementation, for every
original architecture, through every entry point (from_original, timm's pretrained file path);
and clear errors for everything that is not such a checkpoint."""
import hashlib
import os
import re
import warnings

import pytest
import timm
import torch

import timm_elastic
from timm_elastic.convert import ORIGINALS, CheckpointError, from_original, infer_arch, load_original
from timm_elastic.models._cfg import TAGS
from timm_elastic.tasks.coco import COCO_CLASSES

from original import (
    ARCHS, as_release, expected, make_input, manifest, original_forward, stand_in_state, tolerance)
from paper import RELEASED_TAGS


def test_reference_covers_every_original():
    assert set(ARCHS) == set(ORIGINALS)


@pytest.mark.parametrize('arch', [a for a in ARCHS if expected(a)])
def test_reference_forward_gives_the_published_logits(arch):
    """The test's own original forward is checked against the original implementation's logits."""
    state = stand_in_state(arch)
    for out in expected(arch):
        logits = original_forward(arch, state, make_input(out['shape'], out['seed']))
        torch.testing.assert_close(logits, torch.tensor(out['logits']), rtol=0, atol=1e-5)


@pytest.mark.parametrize('arch', [  # the largest three only in the full suite (not in -m "not slow")
    pytest.param(a, marks=pytest.mark.slow) if a in ('resnext50_elastic', 'resnext101_elastic', 'resnext101') else a
    for a in ARCHS])
def test_from_original_is_exact(arch):
    state = stand_in_state(arch)
    assert sum(v.numel() for k, v in state.items() if 'running' not in k and 'num_batches' not in k) \
        == manifest(arch)['num_params']
    model = timm_elastic.from_original(as_release(state))  # architecture inferred from the keys
    spec = ORIGINALS[arch]
    assert model.pretrained_cfg['architecture'] == spec.model and not model.training
    released = arch != 'dla102x_elastic'  # the one architecture the authors did not release
    assert model.pretrained_cfg['url'] == (
        f'http://ai2-vision.s3.amazonaws.com/elastic/imagenet_models/{arch}.pth.tar' if released else '')
    inputs = [make_input(i['shape'], i['seed']) for i in manifest(arch)['inputs']]
    with torch.no_grad():
        for x in inputs:
            reference = original_forward(arch, state, x)
            assert (model(x) - reference).abs().max().item() <= tolerance(reference), (arch, x.shape)
        for out in expected(arch):
            published = torch.tensor(out['logits'])
            got = model(make_input(out['shape'], out['seed']))
            assert (got - published).abs().max().item() <= tolerance(published), (arch, out['shape'])


@pytest.mark.parametrize('arch', [a for a in ARCHS if 'coco' in ORIGINALS[a].released])
def test_coco_fine_tunes_are_exact(arch):
    state = stand_in_state(arch, num_classes=80)
    model = from_original(as_release(state))
    assert model.num_classes == 80
    assert model.pretrained_cfg['tag'] == 'coco'
    assert model.pretrained_cfg['url'] == f'http://ai2-vision.s3.amazonaws.com/elastic/coco_models/coco_{arch}.pth.tar'
    assert tuple(model.pretrained_cfg['label_names']) == COCO_CLASSES
    x = make_input([1, 3, 224, 224], seed=3)
    with torch.no_grad():
        reference = original_forward(arch, state, x)
        assert reference.shape == (1, 80)
        assert (model(x) - reference).abs().max().item() <= tolerance(reference)


def test_coco_labels():
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == 80
    assert COCO_CLASSES[0] == 'person' and COCO_CLASSES[-1] == 'toothbrush'


def test_registry_tags_are_the_releases():
    """`.in1k` / `.coco` tags exactly where the authors released weights (their URLs: test_pretrained.py)."""
    ours = set(timm_elastic.list_models())
    tagged = {n for n in timm.list_pretrained() if n.split('.')[0] in ours}
    assert tagged == RELEASED_TAGS
    for name in tagged:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.num_classes == TAGS[name.split('.')[1]].get('num_classes', 1000)
        if name.endswith('.coco'):
            assert tuple(cfg.label_names) == COCO_CLASSES and cfg.crop_mode == 'squash'
    # the default tag is ImageNet
    assert timm.models.get_pretrained_cfg('resnext50_elastic').tag == 'in1k'
    model = timm.create_model('densenet201_elastic.coco')
    assert model.num_classes == 80 and model.pretrained_cfg['tag'] == 'coco'


@pytest.mark.slow
def test_checkpoint_forms_load_the_same(tmp_path):
    """A release file, its dict, its state dict with and without `module.`, the `model` wrapper other
    trainers write, and a `.safetensors` file of it: the same model."""
    from safetensors.torch import save_file
    state = stand_in_state('dla60x_elastic')
    path = tmp_path / 'dla60x_elastic.pth.tar'
    torch.save(as_release(state), path)
    wrapped = tmp_path / 'dla60x_elastic_model.pth'
    torch.save({'model': state, 'epoch': 3}, wrapped)
    flat = tmp_path / 'dla60x_elastic.safetensors'
    save_file(as_release(state)['state_dict'], str(flat))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    forms = [str(path), path, as_release(state), as_release(state)['state_dict'], state, {'state_dict': state},
             {'model': state}, str(wrapped), str(flat), flat]
    x = make_input([1, 3, 224, 224])
    with torch.no_grad():
        outputs = [from_original(f, arch=None if i % 2 else 'dla60x_elastic')(x) for i, f in enumerate(forms)]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=0, atol=0)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # the input file is never modified


@pytest.mark.slow
def test_timm_pretrained_file_converts_on_load(tmp_path):
    state = stand_in_state('resnext50_elastic')
    path = tmp_path / 'resnext50_elastic.pth.tar'
    torch.save(as_release(state), path)
    model = timm.create_model('resnext50_elastic', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    x = make_input([1, 3, 224, 224])
    with torch.no_grad():
        reference = original_forward('resnext50_elastic', state, x)
        assert (model.eval()(x) - reference).abs().max().item() <= tolerance(reference)
        # another num_classes: timm replaces the classifier, the rest is the original's
        tuned = timm.create_model('resnext50_elastic', pretrained=True, num_classes=10,
                                  pretrained_cfg_overlay=dict(file=str(path))).eval()
        assert tuned.num_classes == 10
        torch.testing.assert_close(tuned.forward_features(x), model.forward_features(x))
        # timm adapts the stem to in_chans and drops the classifier for num_classes=0, after conversion
        gray = timm.create_model('resnext50_elastic', pretrained=True, in_chans=1, num_classes=0,
                                 pretrained_cfg_overlay=dict(file=str(path))).eval()
        torch.testing.assert_close(gray(x[:, :1]), model.forward_head(model.forward_features(
            x[:, :1].expand(-1, 3, -1, -1)), pre_logits=True), rtol=1e-4, atol=1e-4)
    # the COCO tag takes the 80-class fine-tune
    coco = tmp_path / 'coco_resnext50_elastic.pth.tar'
    torch.save(as_release(stand_in_state('resnext50_elastic', num_classes=80)), coco)
    assert timm.create_model('resnext50_elastic.coco', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(coco))).num_classes == 80
    # a checkpoint of another size of classifier than the tag's is named, not a torch size mismatch
    with pytest.raises(CheckpointError, match=r'fc.weight \(expected \[1000, 2048\], found \[80, 2048\]\)'):
        timm.create_model('resnext50_elastic', pretrained=True, pretrained_cfg_overlay=dict(file=str(coco)))


def test_a_coco_file_under_the_imagenet_tag_names_the_coco_tag(tmp_path):
    """timm drops a pretrained classifier whenever num_classes differs from the tag's cfg: a COCO release loaded
    under the default (ImageNet) tag with num_classes=80 loses its classifier, which is said, with the tag that
    keeps it; without num_classes the shape error names that tag."""
    coco = tmp_path / 'coco_dla60x.pth.tar'
    torch.save(as_release(stand_in_state('dla60x', num_classes=80)), coco)
    overlay = dict(file=str(coco))
    with pytest.raises(CheckpointError, match=r'found \[80\]\); its 80 classes are those of the release dla_x60.coco$'):
        timm.create_model('dla_x60', pretrained=True, pretrained_cfg_overlay=overlay)
    with pytest.warns(UserWarning, match=r"classifier has the model's 80 outputs, but timm replaces it .* "
                                         r"\(dla_x60.in1k\) has 1000 classes; dla_x60.coco is the pretrained tag"):
        dropped = timm.create_model('dla_x60', pretrained=True, num_classes=80, pretrained_cfg_overlay=overlay)
    release = timm.create_model('dla_x60.coco', pretrained=True, pretrained_cfg_overlay=overlay)
    assert not torch.equal(dropped.fc.weight, release.fc.weight)  # what the warning says
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the release's tag, and another class count, keep quiet
        kept = timm.create_model('dla_x60', pretrained=True, num_classes=80,
                                 pretrained_cfg_overlay=dict(overlay, num_classes=80))
        timm.create_model('dla_x60', pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(kept.fc.weight, release.fc.weight, rtol=0, atol=0)


@pytest.mark.slow
def test_another_num_classes_keeps_all_but_the_classifier():
    state = stand_in_state('densenet201_elastic')
    with pytest.warns(UserWarning, match='1000 classes and the model 5: classifier.weight, classifier.bias'):
        model = from_original(state, num_classes=5)
    exact = from_original(state)
    x = make_input([1, 3, 224, 224])
    with torch.no_grad():
        assert model(x).shape == (1, 5)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                                   exact.forward_head(exact.forward_features(x), pre_logits=True))


def test_create_kwargs_pass_through():
    model = from_original(stand_in_state('dla60x'), head_window=None, drop_rate=0.2)
    assert model.head_window is None and model.head_drop.p == 0.2
    assert from_original(stand_in_state('dla60x')).head_window == 7  # the original head by default
    with pytest.raises(TypeError, match='pretrained'):
        from_original(stand_in_state('dla60x'), pretrained=True)


# ----------------------------------------------------------------------------------- bad input

def test_wrong_architecture_is_named():
    state = stand_in_state('dla60x_elastic')
    with pytest.raises(CheckpointError) as e:
        from_original(state, arch='dla60x')
    msg = str(e.value)
    assert 'not a checkpoint of dla60x (dla_x60)' in msg and 'key layout is that of dla60x_elastic' in msg
    assert '208 unexpected: level2.tree1.conv1_d.weight' in msg
    with pytest.raises(CheckpointError, match='not a checkpoint of densenet201 .*missing: features.conv0.weight'):
        from_original(state, arch='densenet201')
    with pytest.raises(ValueError, match="unknown original architecture 'resnext77'; known: resnext50, "):
        from_original(state, arch='resnext77')


def test_wrong_architecture_is_named_through_timm(tmp_path):
    """The same mistake through timm's pretrained path (a file given to another model's name) names the
    architecture the file is of, as from_original does."""
    path = tmp_path / 'dla60x_elastic.pth.tar'
    torch.save(stand_in_state('dla60x_elastic'), path)
    with pytest.raises(CheckpointError) as e:
        timm.create_model('dla_x60', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert 'not a checkpoint of dla60x (dla_x60) (its key layout is that of dla60x_elastic): ' in str(e.value)


def test_missing_unexpected_and_misshaped_keys_are_named():
    state = stand_in_state('resnext50')
    for k in ('layer1.0.bn3.weight', 'layer1.0.bn3.bias', 'fc.bias'):
        del state[k]
    state['layer9.0.conv1.weight'] = torch.zeros(1)
    state['layer2.0.conv1.weight'] = torch.zeros(5, 256, 1, 1)  # high path of a plain block
    state['bn1.weight'] = torch.zeros(65)
    with pytest.raises(CheckpointError) as e:
        from_original(state, arch='resnext50')
    msg = str(e.value)
    assert '3 missing: layer1.0.bn3.weight, layer1.0.bn3.bias, fc.bias' in msg
    assert '1 unexpected: layer9.0.conv1.weight' in msg
    assert 'bn1.weight (expected [64], found [65])' in msg
    assert ('layer2.0.conv1.weight (expected [256, 256, 1, 1], found [5, 256, 1, 1] + [128, 256, 1, 1] in '
            'layer2.0.conv1.weight / layer2.0.conv1_d.weight)') in msg
    # long lists are cut to a few names
    del state['layer9.0.conv1.weight']
    for k in [k for k in state if k.startswith('layer3.')]:
        del state[k]
    with pytest.raises(CheckpointError, match=r'missing: .* and \d+ more'):
        from_original(state, arch='resnext50')


def test_not_an_original_checkpoint():
    with pytest.raises(CheckpointError, match='none of the stems'):
        infer_arch({'encoder.weight': torch.zeros(3)})
    state = stand_in_state('resnext50')
    del state['layer4.2.conv3.weight']
    with pytest.raises(CheckpointError, match='matches no original ELASTIC architecture .* closest is resnext50: '
                                              '1 missing: layer4.2.conv3.weight'):
        from_original(state)


@pytest.mark.parametrize('make,says', [
    ('empty', 'is empty (0 bytes), not a PyTorch or safetensors checkpoint'),
    ('text', "is a text file (it begins 'hello, this is a text file'), not a PyTorch or safetensors checkpoint"),
    ('html', 'is an HTML page (a web server\'s page in place of the file'),
    ('binary', 'is a file of unknown format (it begins with the bytes 00 01 02 03 04 05 06 07), not a PyTorch'),
    ('truncated zip', 'is a truncated PyTorch checkpoint: it ends after'),
    ('truncated legacy', 'is a truncated PyTorch checkpoint: it ends after'),
    ('damaged zip', 'is a damaged PyTorch checkpoint'),  # complete, but a byte of its data is wrong
])
def test_unreadable_files_say_what_they_are(tmp_path, make, says):
    path = tmp_path / 'model.pth.tar'
    if make in ('truncated zip', 'truncated legacy', 'damaged zip'):
        legacy = make == 'truncated legacy'  # the format of the authors' files (PyTorch 0.4)
        torch.save(as_release(stand_in_state('dla60x')), path, _use_new_zipfile_serialization=not legacy)
        data = bytearray(path.read_bytes())
        if make == 'damaged zip':
            data[data.find(b'\x80\x02}') + 2] = ord('X')  # data.pkl: an opcode of its first dict
        else:
            data = data[:len(data) // 2]
    else:
        data = {'empty': b'', 'text': b'hello, this is a text file\n',
                'binary': bytes(range(64)),  # control characters: not text
                'html': b'<!DOCTYPE html>\n<html><body>Moved</body></html>'}[make]
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        from_original(str(path))
    message = str(e.value)
    assert message.startswith(f'{path} {says}'), message
    assert ('truncated' in message) == make.startswith('truncated') and '\n' not in message


def test_a_safetensors_file_is_read_whatever_its_name(tmp_path):
    from safetensors.torch import save_file
    state = stand_in_state('dla60x')
    save_file(state, tmp_path / 'dla60x.pth')
    assert load_original(str(tmp_path / 'dla60x.pth')).keys() == state.keys()


def test_files_that_are_not_state_dicts(tmp_path):
    path = tmp_path / 'list.pth'
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match='holds a list, not a checkpoint dict'):
        load_original(str(path))
    torch.save({'epoch': 3, 'optimizer': {'lr': 0.1}}, path)
    with pytest.raises(CheckpointError, match='holds no state dict .*top-level keys are: epoch, optimizer'):
        load_original(str(path))
    with pytest.raises(FileNotFoundError, match='checkpoint not found: .*nope.pth.tar'):
        load_original(str(tmp_path / 'nope.pth.tar'))
    with pytest.raises(CheckpointError, match='is a directory'):
        load_original(str(tmp_path))
    damaged = tmp_path / 'model.safetensors'
    damaged.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    with pytest.raises(CheckpointError, match='model.safetensors is not a readable safetensors file'):
        load_original(str(damaged))


class _RunsCode:
    """An object whose unpickling would create a folder: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize('name', ['resnext_tiny_elastic', 'resnext50_elastic'])
def test_a_timm_state_dict_with_more_keys_loads_as_timm_loads_one(tmp_path, name):
    """A file in timm's layout with a key the model lacks (an auxiliary head, a filter-mode resampler) was taken
    for an original checkpoint: pretrained_strict=False, which timm's own models load with a warning, raised
    "has no original ELASTIC architecture" (or "not a checkpoint of ..."). timm's load now decides: strict names
    the key, non-strict leaves it out."""
    sd = timm.create_model(name).state_dict()
    sd['extra.weight'] = torch.zeros(3)
    path = tmp_path / 'extra.pth'
    torch.save(sd, path)
    overlay = dict(file=str(path))
    model = timm.create_model(name, pretrained=True, pretrained_strict=False, pretrained_cfg_overlay=overlay)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items() if k != 'extra.weight')
    with pytest.raises(RuntimeError, match='Unexpected key.*"extra.weight"'):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    if name == 'resnext_tiny_elastic':  # a dict of another model: what is missing, then that nothing converts
        del sd['fc.weight']
        torch.save(sd, path)
        with pytest.raises(CheckpointError, match=re.escape(
                'not a state dict of resnext_tiny_elastic (1 of its keys missing, e.g. fc.weight), and '
                'resnext_tiny_elastic has no original ELASTIC architecture to convert from')):
            timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / 'code-ran'
    path = tmp_path / 'evil.pth.tar'
    checkpoint = as_release(stand_in_state('dla60x'))
    checkpoint['extra'] = _RunsCode(str(marker))
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match='pickled objects other than tensors .*weights_only=True'):
        from_original(str(path))
    assert not marker.exists()
    # and through timm's own loader (the pretrained file path), said as convert says it
    with pytest.raises(timm_elastic.PretrainedWeightsError, match='pickled objects other than tensors .*weights_only'
                                                                  '=True and never run code'):
        timm.create_model('dla_x60', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()
