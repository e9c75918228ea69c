"""`pretrained=True` of a released tag: the authors' checkpoint downloaded through timm's own path
(torch.hub's cache, `weights_only=True`) and converted on load, served here by an HTTP server on
127.0.0.1 in place of the authors' (the URL set through the pretrained cfg, as a user can), with a
temporary torch.hub cache."""
import http.server
import io
import os
import threading
from collections import Counter

import pytest
import timm
import torch

import timm_elastic
from timm_elastic.convert import ORIGINALS

from original import as_release, make_input, original_forward, stand_in_state, tolerance

ARCH, MODEL = 'dla60x_elastic', 'dla_x60_elastic'
PATH = f'/elastic/imagenet_models/{ARCH}.pth.tar'


class Server(http.server.ThreadingHTTPServer):
    """Serves `files` (path -> bytes); `mode` is what it does with a request: 'ok', '404', 'truncated'
    (announces every byte, sends a third, closes), 'html' (a moved file: 200 with an HTML page)."""
    daemon_threads = True

    def __init__(self):
        super().__init__(('127.0.0.1', 0), Handler)
        self.files, self.mode, self.hits = {}, 'ok', Counter()

    def url(self, path: str = PATH) -> str:
        return f'http://127.0.0.1:{self.server_address[1]}{path}'


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.hits[self.path] += 1
        body = server.files.get(self.path)
        if body is None or server.mode == '404':
            self.send_error(404)
            return
        if server.mode == 'html':
            body = b'<!DOCTYPE html><html><body><h1>This file has moved</h1></body></html>'
        self.send_response(200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 3] if server.mode == 'truncated' else body)
        if server.mode == 'truncated':
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope='module')
def release():
    """The stand-in of the authors' dla60x_elastic.pth.tar as they saved it: PyTorch 0.4's legacy
    (non-zip) format, the DataParallel state dict wrapped with the optimizer and the epoch."""
    state = stand_in_state(ARCH)
    checkpoint = as_release(state)
    first = next(iter(checkpoint['state_dict'].values()))
    checkpoint.update(arch=ARCH, best_prec1=78.75, optimizer={
        'state': {0: {'momentum_buffer': torch.zeros_like(first)}},
        'param_groups': [{'lr': 1e-4, 'momentum': 0.9, 'dampening': 0, 'weight_decay': 1e-4, 'nesterov': False,
                          'params': [0]}]})
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer, _use_new_zipfile_serialization=False)
    x = make_input([1, 3, 224, 224], seed=7)
    return dict(bytes=buffer.getvalue(), x=x, reference=original_forward(ARCH, state, x),
                weights=timm_elastic.from_original(checkpoint).state_dict())  # exact: tests/test_convert.py


@pytest.fixture
def server(release):
    server = Server()
    server.files[PATH] = release['bytes']
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """torch.hub's download cache, empty, as `$TORCH_HOME/hub/checkpoints`."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


def cached_files(hub_cache):
    return sorted(os.listdir(hub_cache)) if hub_cache.exists() else []


def create(server, **kwargs):
    return timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(url=server.url()), **kwargs).eval()


def test_every_tag_loads_the_authors_release_url():
    """The URLs of the allenai/elastic README's wget lines; no Hub repository (none is published)."""
    ours = set(timm_elastic.list_models())
    tags = sorted(n for n in timm.list_pretrained() if n.split('.')[0] in ours)
    expected = {f'{spec.model}.{tag}': 'http://ai2-vision.s3.amazonaws.com/elastic/' + (
        f'imagenet_models/{arch}.pth.tar' if tag == 'in1k' else f'coco_models/coco_{arch}.pth.tar')
        for arch, spec in ORIGINALS.items() for tag in spec.released if spec.model in ours}
    assert tags == sorted(expected)
    for name in tags:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.url == expected[name] and not cfg.hf_hub_id and not cfg.file, name
    assert expected['resnext50_elastic.in1k'] == \
        'http://ai2-vision.s3.amazonaws.com/elastic/imagenet_models/resnext50_elastic.pth.tar'
    assert expected['dla_x60.coco'] == 'http://ai2-vision.s3.amazonaws.com/elastic/coco_models/coco_dla60x.pth.tar'


def test_download_converts_exactly_then_reads_the_cache(server, hub_cache, release):
    model = create(server)
    assert server.hits[PATH] == 1
    assert cached_files(hub_cache) == [f'{ARCH}.pth.tar']  # torch.hub's name: the URL's file name
    with torch.no_grad():
        assert (model(release['x']) - release['reference']).abs().max().item() <= tolerance(release['reference'])
    assert model.pretrained_cfg['tag'] == 'in1k'

    server.mode = '404'  # the second call reads the cache, not the network
    again = create(server, features_only=True)
    assert server.hits[PATH] == 1
    assert_weights(again, release)


def assert_weights(model, release):
    """Every tensor of `model` (a classifier or a features_only backbone) is the converted release's."""
    state = model.state_dict()
    assert len(state) > 100
    for key, value in state.items():
        assert torch.equal(value, release['weights'][key]), key


def test_the_registered_url_reads_a_cached_release(hub_cache, release):
    """No overlay: the tag's own URL, with the file already where torch.hub keeps its download (a
    machine that downloaded it before, or a file copied there): nothing goes to the network."""
    hub_cache.mkdir(parents=True)
    (hub_cache / f'{ARCH}.pth.tar').write_bytes(release['bytes'])
    assert_weights(timm.create_model(f'{MODEL}.in1k', pretrained=True), release)


def test_an_unreadable_file_put_in_the_cache_is_named_and_kept(server, hub_cache, release):
    """The README's offline route, with a copy cut short: no download happened, so the file is the user's; it
    is named and left where it is (a download of this call that does not read is removed: above)."""
    hub_cache.mkdir(parents=True)
    cached = hub_cache / f'{ARCH}.pth.tar'
    cached.write_bytes(release['bytes'][:len(release['bytes']) // 3])
    with pytest.raises(timm_elastic.PretrainedWeightsError) as info:
        create(server)
    message = str(info.value)
    assert f'{cached}, where torch.hub keeps the download of {server.url()}, is not a readable checkpoint' in message
    assert 'left as it is' in message and 'downloaded from' not in message
    assert cached.read_bytes() == release['bytes'][:len(release['bytes']) // 3]
    assert server.hits[PATH] == 0


@pytest.mark.parametrize('mode,says', [
    ('404', 'HTTP Error 404'),
    ('truncated', 'truncated'),
    ('html', 'an HTML page'),
    ('offline', 'Connection refused'),
])
def test_a_failed_download_is_one_clear_error(server, hub_cache, mode, says):
    server.mode = mode
    url = server.url()
    if mode == 'offline':
        server.shutdown()
        server.server_close()  # nothing listens on the port any more
    with pytest.raises(timm_elastic.PretrainedWeightsError) as info:
        timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(url=url))
    message = str(info.value)
    assert message.startswith(f'could not load the pretrained weights of {MODEL}.in1k: ')
    assert says in message and url in message
    assert f"timm-elastic convert {ARCH}.pth.tar --out DIR" in message
    assert "timm.create_model('local-dir:DIR', pretrained=True)" in message
    # where the commands read it from (train --task segment's backbone takes no file or folder of its own)
    assert f"put it at {hub_cache / (ARCH + '.pth.tar')}, where pretrained=True" in message
    assert info.value.__context__ is None and info.value.__cause__ is None  # one error, not a chain
    assert server.hits[PATH] == (0 if mode == 'offline' else 1)  # tried once: no retries
    assert cached_files(hub_cache) == []  # nothing half-written is left to be read next time

    if mode != 'offline':
        server.mode = 'ok'  # the file is back: the next call downloads it
        create(server)
        assert server.hits[PATH] == 2 and cached_files(hub_cache) == [f'{ARCH}.pth.tar']


@pytest.mark.parametrize('content,says', [
    (b'<!DOCTYPE html><html><body>moved</body></html>', 'is an HTML page'),
    (b'', 'is empty (0 bytes)'),
])
def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path, content, says):
    """pretrained_cfg_overlay=dict(file=...), the README's offline route: torch.load's errors came through as
    they were (for an HTML page: 'retry with weights_only=False', which would run what the file holds)."""
    path = tmp_path / f'{ARCH}.pth.tar'
    path.write_bytes(content)
    with pytest.raises(timm_elastic.PretrainedWeightsError) as info:
        timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(info.value)
    assert message.startswith(f'could not load the pretrained weights of {MODEL}.in1k from the file {path}: ')
    assert says in message and 'weights_only' not in message
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_other_errors_stay_what_they_are(server, hub_cache):
    """Only a failure to get or read the weights becomes a PretrainedWeightsError."""
    with pytest.raises(TypeError, match='no_such_argument'):
        create(server, no_such_argument=1)
    assert server.hits[PATH] == 0


@pytest.mark.filterwarnings('ignore:For .tu-. .timm universal. encoders:UserWarning')  # smp >= 0.5 prefers True
@pytest.mark.parametrize('encoder_weights,arch,kwargs', [
    ('imagenet', 'Unet', {}), (True, 'Unet', {}),
    ('imagenet', 'DeepLabV3Plus', dict(encoder_output_stride=8)),  # dilated: the same weights
])
def test_smp_encoder_weights_go_through_the_same_path(server, hub_cache, release, encoder_weights, arch, kwargs):
    import segmentation_models_pytorch as smp
    model = getattr(smp, arch)(f'tu-{MODEL}', encoder_weights=encoder_weights, classes=2,
                               pretrained_cfg_overlay=dict(url=server.url()), **kwargs)
    assert server.hits[PATH] == 1
    assert_weights(model.encoder.model, release)
