"""Make docs/paint-screenshot.png: the real app, serving a trained demo run, in headless Chromium.

    gensynth train --model oasis --data demo --steps 400 --run-dir /tmp/oasis-demo
    python docs/paint_screenshot.py /tmp/oasis-demo

It starts from the run's first validation label map, paints a stroke of road and a rectangle of building with
real pointer events, waits for the image, and saves the screenshot (quantised to 255 colours to keep it small).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image

from gensynth.paint.browser import PaintPage, find_chromium
from gensynth.paint.server import PaintServer
from gensynth.paint.session import PaintSession

OUT = Path(__file__).resolve().parent / "paint-screenshot.png"


def main(run_dir: str, sample: int = 0) -> None:
    session = PaintSession.from_checkpoint(run_dir)
    session.initial.extend(session.dataset_samples(sample + 1)[sample:])
    server = PaintServer(session, port=0)
    server.start_background()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("Chromium/chromedriver not found: apt-get install chromium chromium-driver")
    with tempfile.TemporaryDirectory() as tmp:
        page = PaintPage.open(server.url, chromium, tmp, width=1320, height=860)
        try:
            names = {c["name"]: c["id"] for c in session.info()["classes"]}
            h, w = page.grid_size()
            n = page.generations()
            page.choose_class(names["road"])
            page.stroke([(w // 2, h - 1), (w // 2 + 2, h * 3 // 4), (w // 2 + 6, h * 5 // 8)], size=max(3, w // 10))
            page.wait_for_image(n)
            n = page.generations()
            page.choose_class(names["building"])
            page.stroke([(w // 8, h // 3), (w // 3, h * 5 // 8)], tool="rect")
            page.wait_for_image(n)
            page.choose_class(names["tree"])
            shot = Path(tmp) / "shot.png"
            page.screenshot(shot)
        finally:
            page.close()
            server.shutdown()
            server.server_close()
        with Image.open(shot) as im:
            im.convert("RGB").quantize(colors=255, method=Image.Quantize.MEDIANCUT).save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
