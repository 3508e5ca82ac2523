"""``gensynth paint`` without a browser: the HTTP API (generation, label upload and download, validation errors),
the 127.0.0.1 binding and Host check, and the command line."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gensynth.paint.server import PaintServer
from conftest import styled_reference
from gensynth.paint.protocol import GenerateRequest, encode_grid
from gensynth.paint.session import PaintSession

SIZE = 32


@pytest.fixture(scope="module")
def server(painting_run):
    session = PaintSession.from_checkpoint(painting_run.run_dir)
    srv = PaintServer(session, port=0)
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


def call(srv, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request to the server."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


def error_of(resp) -> str:
    status, _, body = resp
    assert status >= 400, body[:200]
    return json.loads(body)["error"]


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).copy()


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def scene() -> np.ndarray:
    ids = np.full((SIZE, SIZE), 1, np.int64)  # sky
    ids[16:, :] = 5  # grass
    ids[20:28, 4:14] = 7  # road
    return ids


def test_binds_loopback_by_default_and_refuses_foreign_host_headers(server):
    assert server.server_address[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.server_address[1]}/"
    assert server.loopback_only
    status, _, page = call(server, "GET", "/")
    assert status == 200 and b'<canvas id="labels">' in page
    for name in ("app.js", "style.css"):
        assert call(server, "GET", f"/static/{name}")[0] == 200
    assert "Host 'attacker.example:80' is not a loopback address" in error_of(
        call(server, "GET", "/api/info", headers={"Host": "attacker.example:80"}))
    assert call(server, "GET", "/api/info", headers={"Host": "localhost:1234"})[0] == 200
    assert error_of(call(server, "GET", "/static/../session.py")) == "no such file: /static/../session.py"
    assert error_of(call(server, "GET", "/nope")) == "no such page: /nope"


def test_info_lists_the_dataset_palette_and_noise(server):
    info = json.loads(call(server, "GET", "/api/info")[2])
    assert (info["dataset"], info["generator"], info["height"], info["width"]) == ("demo", "oasis", SIZE, SIZE)
    assert [c["name"] for c in info["classes"]][:3] == ["unlabelled", "sky", "cloud"]
    assert info["classes"][1] == {"id": 1, "name": "sky", "color": [70, 130, 180], "raw_id": 1}
    assert info["default_class"] == 0
    assert info["spatial_noise"] and info["takes_noise"] and not info["style_image"]
    assert info["samples"] == []


def test_generate_equals_gensynth_generate_with_the_same_seed(server):
    ids = scene()
    status, headers, body = call(server, "POST", "/api/generate",
                                 {"width": SIZE, "height": SIZE, "ids": encode_grid(ids), "seeds": [3]})
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert float(headers["X-Model-Ms"]) > 0
    syn = server.session.syn
    expected = np.asarray(syn.to_pil(syn.generate(torch.from_numpy(ids), samples=1, seed=3))[0])
    np.testing.assert_array_equal(png_array(body), expected)
    other = call(server, "POST", "/api/generate", {"width": SIZE, "height": SIZE, "ids": encode_grid(ids),
                                                   "seeds": [4]})[2]
    assert np.abs(png_array(other).astype(int) - expected.astype(int)).max() > 10


def test_a_seed_map_changes_the_image_only_near_its_region(server):
    ids = scene()
    noise = np.zeros((SIZE, SIZE), np.int64)
    noise[20:28, 4:14] = 1  # the road gets its own noise
    base = png_array(call(server, "POST", "/api/generate", {"width": SIZE, "height": SIZE, "ids": encode_grid(ids),
                                                            "seeds": [3]})[2]).astype(int)
    edited = png_array(call(server, "POST", "/api/generate", {
        "width": SIZE, "height": SIZE, "ids": encode_grid(ids), "seeds": [3, 11], "noise": encode_grid(noise)})[2])
    diff = np.abs(edited.astype(int) - base).max(axis=2)
    assert diff[20:28, 4:14].mean() > 2
    # a change of noise reaches at most 11 pixels in this generator (2 blocks from 1/2 scale, 3x3 convolutions):
    # beyond 12 pixels of the region the image is bit-identical
    assert diff[:8, :].max() == 0 and diff[:, 26:].max() == 0
    # the same spatial noise through the Python API gives the same image
    syn = server.session.syn
    z = torch.stack([syn.sample_z(1, seed=s)[0] for s in (3, 11)])[torch.from_numpy(noise)].permute(2, 0, 1)
    expected = np.asarray(syn.to_pil(syn.generate(torch.from_numpy(ids), z=z[None, None]))[0])
    np.testing.assert_array_equal(edited, expected)


@pytest.mark.parametrize("body, message", [
    ({"width": SIZE, "height": SIZE, "ids": base64.b64encode(b"0123456789").decode()},
     f"label ids: expected {SIZE}x{SIZE} uint16 values ({2 * SIZE * SIZE} bytes), got 10 bytes"),
    ({"width": SIZE, "height": SIZE, "ids": encode_grid(np.full((SIZE, SIZE), 99))},
     "label map (painted) contains class ids [99] that are not paintable classes of dataset 'demo' "
     "(model classes 0..10)"),
    ({"width": 33, "height": 33, "ids": encode_grid(np.zeros((33, 33)))},
     "label map (painted) is 33x33 (HxW); this model was trained at 32x32 and needs sides that are "
     "multiples of 2"),
    ({"width": SIZE, "height": SIZE, "ids": "***"}, "label ids: not valid base64"),
    ({"width": SIZE, "height": SIZE, "ids": encode_grid(np.zeros((SIZE, SIZE))), "seeds": [1],
      "noise": encode_grid(np.ones((SIZE, SIZE)))},
     "the noise map refers to seed index 1 but only 1 seeds were given"),
    ({"width": 0, "height": SIZE, "ids": ""}, "width: Input should be greater than or equal to 1"),
    ({"width": SIZE, "height": SIZE, "ids": "", "colour": 1}, "colour: Extra inputs are not permitted"),
    ({"width": SIZE, "height": SIZE, "ids": "", "seeds": [-1]}, "seeds must be integers in 0..2**63-1, got [-1]"),
    ({"width": SIZE, "height": SIZE, "ids": encode_grid(np.zeros((SIZE, SIZE))), "style": "aGVsbG8="},
     "generator 'oasis' has no style encoder (style images need e.g. SPADE with use_vae=true)"),
])
def test_generate_rejects_bad_requests_with_a_message(server, body, message):
    status, _, raw = call(server, "POST", "/api/generate", body)
    assert status == 400
    assert message in json.loads(raw)["error"]


def test_generate_refuses_bodies_that_are_not_json_or_too_large(server):
    assert error_of(call(server, "POST", "/api/generate", b"nope")).startswith("body: Invalid JSON")
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/api/generate")
    conn.putheader("Content-Length", str(10 ** 9))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    assert json.loads(resp.read())["error"] == "request body of 1000000000 bytes exceeds the limit of 67108864 bytes"
    conn.close()
    assert error_of(call(server, "POST", "/api/nothing", {})) == "no such endpoint: POST /api/nothing"


def test_label_png_round_trip_is_what_generate_reads(server, tmp_path):
    from gensynth.generate.labels import read_label_map

    ids = scene()
    status, headers, png = call(server, "POST", "/api/labelmap", {"width": SIZE, "height": SIZE,
                                                                  "ids": encode_grid(ids)})
    assert status == 200 and "gensynth_labels.png" in headers["Content-Disposition"]
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "L"
    path = tmp_path / "map.png"
    path.write_bytes(png)
    syn = server.session.syn
    np.testing.assert_array_equal(read_label_map(path, syn.spec, syn.size, syn.size_multiple).numpy(), ids)
    up = json.loads(call(server, "POST", "/api/labels", png, {"X-Filename": "map.png"})[2])
    assert (up["width"], up["height"]) == (SIZE, SIZE)
    decoded = np.frombuffer(base64.b64decode(up["ids"]), "<u2").reshape(SIZE, SIZE)
    np.testing.assert_array_equal(decoded, ids)


def test_label_upload_errors_name_the_file_and_the_problem(server):
    colour = np.zeros((SIZE, SIZE, 3), np.uint8)
    colour[..., 0] = 200
    assert error_of(call(server, "POST", "/api/labels", png_bytes(colour), {"X-Filename": "mask.png"})).startswith(
        "label map 'mask.png': colour (200, 0, 0) at pixel (x=0, y=0) is not a class colour of dataset 'demo'")
    # a colour mask in the dataset's class colours is read as training reads it
    spec = server.session.syn.spec
    ids = np.zeros((SIZE, SIZE), np.int64)
    ids[: SIZE // 2] = 1
    ids[SIZE // 2:, : SIZE // 3] = 5
    palette = np.array([c.color for c in spec.classes], np.uint8)
    up = json.loads(call(server, "POST", "/api/labels", png_bytes(palette[ids]), {"X-Filename": "m.png"})[2])
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(up["ids"]), "<u2").reshape(SIZE, SIZE), ids)
    bad_ids = np.full((SIZE, SIZE), 50, np.uint8)
    assert error_of(call(server, "POST", "/api/labels", png_bytes(bad_ids), {"X-Filename": "ids.png"})) == (
        "label map 'ids.png' contains ids 50 that dataset 'demo' does not define (valid raw ids: 0..10); "
        "the model has 11 classes")
    odd = np.zeros((33, 32), np.uint8)
    assert "label map 'odd.png' is 33x32 (HxW)" in error_of(
        call(server, "POST", "/api/labels", png_bytes(odd), {"X-Filename": "odd.png"}))
    assert error_of(call(server, "POST", "/api/labels", b"", {"X-Filename": "e.png"})) == "'e.png' is empty"
    assert error_of(call(server, "POST", "/api/labels", b"not a png", {"X-Filename": "x.png"})).startswith(
        "cannot read label map 'x.png': not an image file (expected a PNG)")
    # a larger map whose sides are multiples of the generator's: accepted, the canvas takes its size
    big = json.loads(call(server, "POST", "/api/labels", png_bytes(np.zeros((48, 64), np.uint8)))[2])
    assert (big["height"], big["width"]) == (48, 64)


def test_samples_from_labels_are_served(painting_run, tmp_path):
    session = PaintSession.from_checkpoint(painting_run.run_dir, size=(16, 16))
    session.initial.append(("scene", scene()))
    srv = PaintServer(session, port=0)
    srv.start_background()
    try:
        info = json.loads(call(srv, "GET", "/api/info")[2])
        assert (info["height"], info["width"], info["samples"]) == (16, 16, ["scene"])
        got = json.loads(call(srv, "GET", "/api/sample/0")[2])
        assert got["name"] == "scene" and (got["height"], got["width"]) == (SIZE, SIZE)
        assert error_of(call(srv, "GET", "/api/sample/1")) == "no label map 1: 1 were given with --labels"
    finally:
        srv.shutdown()
        srv.server_close()


def test_command_prints_the_url_and_serves(painting_run, tmp_path):
    label = tmp_path / "start.png"
    label.write_bytes(png_bytes(scene().astype(np.uint8)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gensynth", "paint", "-c", str(painting_run.run_dir),
                             "--labels", str(label), "--from-dataset", "--max-labels", "2", "--port", "0",
                             "--blank-class", "sky"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("open http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[1]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/info")
        info = json.loads(conn.getresponse().read())
        assert info["samples"] == ["start", "demo_val_000000", "demo_val_000001"]  # --labels, then the run's val
        assert info["default_class"] == 1  # --blank-class sky
        conn.request("GET", "/api/sample/2")
        got = json.loads(conn.getresponse().read())
        assert (got["name"], got["height"], got["width"]) == ("demo_val_000001", SIZE, SIZE)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_command_rejects_a_bad_size(painting_run):
    from click.testing import CliRunner

    from gensynth.cli.main import cli

    res = CliRunner().invoke(cli, ["paint", "-c", str(painting_run.run_dir), "--size", "33x33"])
    assert res.exit_code == 2
    assert "label map of --size is 33x33 (HxW); this model was trained at 32x32" in res.output.replace("\n", " ")
    res = CliRunner().invoke(cli, ["paint", "-c", str(painting_run.run_dir), "--size", "big"])
    assert res.exit_code == 2 and "--size must be HxW with positive integers (e.g. 256x512), got 'big'" in res.output
    assert "paint" in CliRunner().invoke(cli, ["--help"]).output
    res = CliRunner().invoke(cli, ["paint", "-c", str(painting_run.run_dir), "--blank-class", "skye"])
    assert res.exit_code == 2 and "dataset 'demo' has no class named 'skye'. Did you mean 'sky'?" in res.output


@pytest.fixture(scope="module")
def spade_vae_server(spade_vae_run):
    srv = PaintServer(PaintSession.from_checkpoint(spade_vae_run.run_dir), port=0)
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_style_image_drives_a_spade_vae_generator(spade_vae_server):
    srv = spade_vae_server
    info = json.loads(call(srv, "GET", "/api/info")[2])
    assert info["style_image"] and info["takes_noise"] and not info["spatial_noise"]
    assert info["noise"] == "vector"
    ids = encode_grid(scene())

    def style_png(rgb) -> bytes:
        style = np.zeros((40, 24, 3), np.uint8)  # any size: resized to the canvas
        style[...] = rgb
        style[::2] = 255 - np.asarray(rgb, np.uint8)
        return png_bytes(style)

    def styled(png: bytes, seed=0):
        body = {"width": SIZE, "height": SIZE, "ids": ids, "seeds": [seed],
                "style": "data:image/png;base64," + base64.b64encode(png).decode()}
        status, _, out = call(srv, "POST", "/api/generate", body)
        assert status == 200, out[:300]
        return png_array(out)

    syn = srv.session.syn
    red, blue = style_png((220, 30, 30)), style_png((20, 40, 230))
    red_float, red_expected = styled_reference(syn, scene(), red, 0)
    np.testing.assert_array_equal(styled(red), red_expected)
    np.testing.assert_array_equal(styled(red), red_expected)  # the seed fixes the draw from q(z | style)
    np.testing.assert_array_equal(styled(blue, seed=3), styled_reference(syn, scene(), blue, 3)[1])
    # the style reaches the generator: another style image gives another image (this tiny model's images differ by
    # less than one 8-bit step, so the difference is checked on the generator's float output)
    blue_float = styled_reference(syn, scene(), blue, 0)[0]
    plain_float = syn.generate(torch.from_numpy(scene()), samples=1, seed=0)[0]
    # (measured: 5e-4 and 4e-4; without the style both differences would be exactly 0)
    assert (red_float - blue_float).abs().max() > 5e-5 and (red_float - plain_float).abs().max() > 5e-5
    assert error_of(call(srv, "POST", "/api/generate", {"width": SIZE, "height": SIZE, "ids": ids,
                                                        "style": "bm90IGFuIGltYWdl"})).startswith(
        "cannot read the style image: cannot identify image file")
    # without a style image the seed picks z ~ N(0, I), as `gensynth generate --seed` does
    status, _, png = call(srv, "POST", "/api/generate", {"width": SIZE, "height": SIZE, "ids": ids, "seeds": [5]})
    expected = np.asarray(syn.to_pil(syn.generate(torch.from_numpy(scene()), samples=1, seed=5))[0])
    np.testing.assert_array_equal(png_array(png), expected)


def test_bf16_autocast_gives_nearly_the_fp32_image(painting_run):
    ids = torch.from_numpy(scene())
    images = {}
    for precision in ("fp32", "bf16"):
        session = PaintSession.from_checkpoint(painting_run.run_dir, precision=precision)
        image, timing = session.generate(GenerateRequest(width=SIZE, height=SIZE, ids=encode_grid(ids.numpy()),
                                                         seeds=[2]))
        assert timing.model_ms > 0 and session.info()["precision"] == precision
        images[precision] = np.asarray(image).astype(int)
    diff = np.abs(images["bf16"] - images["fp32"])
    assert diff.mean() < 1 and diff.max() <= 8, (diff.mean(), diff.max())  # measured: 0.12 and 1 of 255
    with pytest.raises(Exception, match="precision must be fp32 or bf16, got 'fp16'"):
        PaintSession.from_checkpoint(painting_run.run_dir, precision="fp16")


def test_command_names_a_port_in_use(painting_run, server):
    from click.testing import CliRunner

    from gensynth.cli.main import cli

    busy = str(server.server_address[1])
    res = CliRunner().invoke(cli, ["paint", "-c", str(painting_run.run_dir), "--port", busy])
    assert res.exit_code == 2
    assert (f"port {busy} on 127.0.0.1 is in use: choose another with --port, or --port 0 for any free port"
            in res.output.replace("\n", " "))


def test_the_noise_of_a_region_reaches_at_most_eleven_pixels_in_the_test_generator():
    """What the margins of the re-sampling tests rest on: in the tiny test generator (random weights, float
    images), new noise in a region changes nothing more than 11 pixels away, and does change pixels 8 away."""
    from gensynth.build import build_generator, resolve_parts
    from gensynth.config import resolve
    from gensynth.interfaces import Condition

    from conftest import tiny_overrides

    cfg, _ = resolve(tiny_overrides("unused-run", "unused-cache"))
    torch.manual_seed(0)
    gen = build_generator(resolve_parts(cfg)).eval()
    n = gen.num_classes
    ids = torch.randint(0, n, (1, 32, 32))
    cond = Condition(torch.nn.functional.one_hot(ids, n).permute(0, 3, 1, 2).float(), ids=ids)
    z = torch.randn(1, gen.z_dim, 32, 32)
    z2 = z.clone()
    z2[:, :, 20:28, 4:14] = torch.randn(1, gen.z_dim, 8, 10)
    with torch.no_grad():
        d = (gen(cond, z=z).image - gen(cond, z=z2).image).abs().amax(dim=(0, 1))
    assert d[:8, :].max() == 0 and d[:, 26:].max() == 0
    assert d[:12, :].max() > 0 and d[:, 22:].max() > 0  # 8 pixels would not have been enough
