"""``gensynth paint`` in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by selenium.

The app serves a tiny trained OASIS (``painting_run``) on a 64x64 blank canvas; each test paints with real pointer
events, then checks the downloaded id PNG pixel by pixel and the generated images. Screenshots are kept under
pytest's temporary directory (``paint-screenshots``), not in the repository.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import styled_reference
from gensynth.paint.browser import find_chromium

CHROMIUM = find_chromium()
REQUIRED = bool(os.environ.get("GENSYNTH_REQUIRE_CHROMIUM"))  # set by .ci/run: CI must run these tests
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not REQUIRED,
    reason="Chromium or chromedriver not found (Debian: apt-get install chromium chromium-driver; or set "
           "GENSYNTH_CHROMIUM and GENSYNTH_CHROMEDRIVER); .ci/run installs them")
SIZE = 64


@pytest.fixture(scope="module")
def server(painting_run):
    from gensynth.paint.server import PaintServer
    from gensynth.paint.session import PaintSession

    session = PaintSession.from_checkpoint(painting_run.run_dir, size=(SIZE, SIZE))
    srv = PaintServer(session, port=0)
    srv.start_background()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("paint-screenshots")


@pytest.fixture
def page(server, tmp_path):
    if CHROMIUM is None:
        pytest.fail("GENSYNTH_REQUIRE_CHROMIUM is set but Chromium or chromedriver was not found")
    if not REQUIRED:
        pytest.importorskip("selenium", reason="selenium is not installed (it is in the dev extra)")
    from gensynth.paint.browser import PaintPage

    p = PaintPage.open(server.url, CHROMIUM, tmp_path / "downloads")
    yield p
    p.close()


def read_png(data_or_path) -> np.ndarray:
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as im:
        return np.asarray(im).copy()


def test_a_stroke_paints_its_class_exactly_there_and_the_image_follows(page, painting_run, shots, tmp_path):
    assert page.grid_size() == (SIZE, SIZE)
    blank_image = read_png(page.image_png())
    n = page.generations()
    page.choose_class(5)  # grass
    page.stroke([(10, 20), (40, 20), (40, 30)], size=3)
    page.wait_for_image(n)
    labels = read_png(page.download_labels())
    expected = np.zeros((SIZE, SIZE), np.uint8)  # the blank canvas is the don't-care class 0
    expected[19:22, 9:42] = 5  # a 3-pixel square brush along y = 20 from x = 10 to 40 ...
    expected[19:32, 39:42] = 5  # ... then down x = 40 to y = 30
    assert labels.dtype == np.uint8 and labels.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(labels, expected)
    # the file is what `gensynth generate --labels` reads
    from click.testing import CliRunner

    from gensynth.cli.main import cli

    out = tmp_path / "gen"
    res = CliRunner().invoke(cli, ["generate", "-c", str(painting_run.run_dir), "-l", str(page.downloads /
                                   "gensynth_labels.png"), "-o", str(out), "--seed", "0", "--native-size"])
    assert res.exit_code == 0, res.output
    assert read_png(out / "gensynth_labels_00.png").shape == (SIZE, SIZE, 3)
    # the image followed the stroke, and equals what `gensynth generate --seed 0` makes of the downloaded map
    shown = read_png(page.image_png())
    assert shown.shape == (SIZE, SIZE, 3)
    assert np.abs(shown.astype(int) - blank_image.astype(int)).max() > 0
    np.testing.assert_array_equal(shown, read_png(out / "gensynth_labels_00.png"))
    timings = page.probe()["timings"]
    assert timings and all(t["total"] > 0 for t in timings)
    shot = page.screenshot(shots / "stroke.png")
    assert read_png(shot).ndim == 3


def test_resampling_the_painted_region_changes_the_image_only_around_it(page, shots):
    n = page.generations()
    page.choose_class(7)  # road
    page.stroke([(24, 40), (40, 40)], size=4)
    page.wait_for_image(n)
    labels_before = read_png(page.download_labels())
    before = read_png(page.image_png()).astype(int)
    n = page.generations()
    page.click("#resample-region")
    page.wait_for_image(n)
    after = read_png(page.image_png()).astype(int)
    np.testing.assert_array_equal(read_png(page.download_labels()), labels_before)  # labels untouched
    diff = np.abs(after - before).max(axis=2)
    painted = labels_before == 7
    ys, xs = np.nonzero(painted)
    assert diff[painted].mean() > 2, "the re-sampled region did not change"
    # OASIS feeds the noise into each SPADE layer at that layer's resolution; this generator's coarsest layer is
    # at 1/2 scale and its 3x3 convolutions reach further: a change of noise reaches at most 11 pixels (measured on
    # this architecture with random weights), so 12 pixels bound the spread exactly (smaller margins pass or fail
    # by the rounding to 8 bits of changes far below one level)
    margin = 12
    far = np.ones_like(painted)
    far[max(ys.min() - margin, 0):ys.max() + margin + 1, max(xs.min() - margin, 0):xs.max() + margin + 1] = False
    assert far.sum() > SIZE * SIZE // 2
    assert diff[far].max() == 0, f"pixels far from the stroke changed by up to {diff[far].max()}"
    page.screenshot(shots / "resample_region.png")


def test_rectangle_polygon_fill_eraser_undo_redo(page, shots):
    page.choose_class(1)  # sky
    page.stroke([(2, 3), (20, 12)], tool="rect")
    page.choose_class(8)  # building
    page.polygon([(40, 40), (60, 40), (60, 60), (50, 60)])  # four clicks at pixel corners, then Enter
    page.choose_class(9)  # tree: flood-fill the sky rectangle
    page.choose_tool("fill")
    page.click_pixel(5, 5)
    page.js("const s = document.getElementById('eraser-class'); s.value = '4'; s.dispatchEvent(new Event('change'));")
    page.stroke([(10, 8), (10, 8)], size=1, tool="eraser")  # one pixel of water
    labels = read_png(page.download_labels())
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[3:13, 2:21] = 9
    expected[8, 10] = 4
    # the polygon's pixels: those whose centre (x + 0.5, y + 0.5) is inside; its left edge runs from (40, 40) to
    # (50, 60), i.e. x = 40 + (y - 40) / 2
    for y in range(40, 60):
        left = 40 + (y + 0.5 - 40) / 2
        for x in range(40, 60):
            if x + 0.5 > left:
                expected[y, x] = 8
    np.testing.assert_array_equal(labels, expected)
    page.click("#undo")  # the eraser pixel
    page.click("#undo")  # the flood fill
    undone = expected.copy()
    undone[3:13, 2:21] = 1
    np.testing.assert_array_equal(read_png(page.download_labels()), undone)
    page.click("#redo")
    redone = undone.copy()
    redone[3:13, 2:21] = 9
    np.testing.assert_array_equal(read_png(page.download_labels()), redone)
    page.screenshot(shots / "tools.png")


def test_palette_search_filters_classes(page):
    page.element("#class-search").send_keys("ro")
    visible = page.js("return [...document.querySelectorAll('#palette li')]"
                      ".filter(li => !li.classList.contains('hidden')).map(li => li.textContent)")
    assert [v.rstrip("0123456789") for v in visible] == ["road", "rock"]


def test_opening_a_label_png_replaces_the_canvas(page, tmp_path):
    start = np.full((32, 48), 5, np.uint8)  # another size than the blank canvas: the canvas takes it
    start[:10] = 1
    start[20:, 30:] = 10
    path = tmp_path / "start.png"
    Image.fromarray(start, "L").save(path)
    n = page.generations()
    page.element("#upload-labels").send_keys(str(path))
    page.wait_for_image(n)
    assert page.grid_size() == (32, 48)
    np.testing.assert_array_equal(read_png(page.download_labels()), start)
    assert read_png(page.image_png()).shape == (32, 48, 3)
    bad = tmp_path / "colour.png"
    Image.fromarray(np.dstack([start * 20, start, start]).astype(np.uint8), "RGB").save(bad)
    page.element("#upload-labels").send_keys(str(bad))
    page.wait_for(lambda: page.probe()["errors"], 20, "the error message")
    assert "label map 'colour.png': colour" in page.element("#status").text
    assert "is not a class colour of dataset 'demo'" in page.element("#status").text
    page.click("#undo")  # back to the blank 64x64 canvas
    assert page.grid_size() == (SIZE, SIZE)


def test_resample_class_then_new_sample_and_undo(page):
    page.choose_class(6)  # sand: a block in the top-left corner
    n = page.generations()
    page.stroke([(2, 2), (14, 14)], tool="rect")
    page.wait_for_image(n)
    n = page.generations()
    page.choose_class(3)  # mountain: a stroke far away, painted after the sand
    page.stroke([(50, 56), (60, 56)], size=3)
    page.wait_for_image(n)
    before = read_png(page.image_png()).astype(int)
    page.choose_class(6)
    n = page.generations()
    page.click("#resample-class")  # new noise for the sand only, although the last stroke was mountain
    page.wait_for_image(n)
    after = read_png(page.image_png()).astype(int)
    diff = np.abs(after - before).max(axis=2)
    assert diff[2:15, 2:15].mean() > 2
    assert diff[27:, 27:].max() == 0  # the mountain stroke and all beyond 12 px of the sand: unchanged
    seed = page.element("#seed").get_attribute("value")
    n = page.generations()
    page.click("#new-sample")
    page.wait_for_image(n)
    assert page.element("#seed").get_attribute("value") != seed
    fresh = read_png(page.image_png()).astype(int)
    assert (np.abs(fresh - after).max(axis=2) > 0).mean() > 0.5  # a new global noise changes most pixels
    n = page.generations()
    page.click("#undo")  # back to the re-sampled noise and the old seed
    page.wait_for_image(n)
    np.testing.assert_array_equal(read_png(page.image_png()).astype(int), after)


def test_style_image_input_of_a_spade_vae_model(spade_vae_run, tmp_path):
    from gensynth.paint.browser import PaintPage
    from gensynth.paint.server import PaintServer
    from gensynth.paint.protocol import decode_style
    from gensynth.paint.session import PaintSession

    if CHROMIUM is None:
        pytest.fail("GENSYNTH_REQUIRE_CHROMIUM is set but Chromium or chromedriver was not found")
    session = PaintSession.from_checkpoint(spade_vae_run.run_dir)
    requests = []  # what the page sent: the model's images barely depend on the style, the requests must
    generate = session.generate
    session.generate = lambda req: (requests.append(req), generate(req))[1]
    srv = PaintServer(session, port=0)
    srv.start_background()
    page = PaintPage.open(srv.url, CHROMIUM, tmp_path / "downloads")
    try:
        assert page.element("#style-tools").is_displayed()
        assert not page.element("#spatial-tools").is_displayed()  # no spatial noise: no local re-sampling
        plain = read_png(page.image_png())
        syn = srv.session.syn
        ids = np.zeros((32, 32), np.int64)  # the blank canvas: don't-care class 0
        np.testing.assert_array_equal(plain, np.asarray(syn.to_pil(syn.generate(torch.from_numpy(ids), seed=0))[0]))
        style = np.zeros((24, 24, 3), np.uint8)
        style[..., 0] = 230
        style[::3, :, 2] = 255
        path = tmp_path / "style.png"
        Image.fromarray(style).save(path)
        n = page.generations()
        page.element("#style-image").send_keys(str(path))
        page.wait_for_image(n)
        # the page sent the file, and the image is the styled reference
        assert requests[-1].style is not None and decode_style(requests[-1].style) == path.read_bytes()
        assert requests[-1].style.startswith("data:image/png;base64,")
        np.testing.assert_array_equal(read_png(page.image_png()), styled_reference(syn, ids, path.read_bytes(), 0)[1])
        assert page.element("#style-preview").is_displayed()
        n = page.generations()
        page.click("#clear-style")
        page.wait_for_image(n)
        np.testing.assert_array_equal(read_png(page.image_png()), plain)  # seed 0 without style again
        assert requests[-1].style is None
    finally:
        page.close()
        srv.shutdown()
        srv.server_close()
