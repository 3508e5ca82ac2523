"""Driving the painting page from Python with headless Chromium (selenium): for tests, the speed benchmark and
the README screenshot. Not used by ``gensynth paint`` itself; needs ``pip install selenium`` (in the ``dev``
extra) and a Chromium with its chromedriver (Debian: ``apt-get install chromium chromium-driver``).

    >>> found = find_chromium()                       # None when this machine has no Chromium
    >>> page = PaintPage.open(url, found, downloads)  # headless, fresh profile
    >>> page.choose_class(5); page.stroke([(4, 4), (20, 4)], size=3)
    >>> page.wait_for_image(); page.download_labels()  # -> Path of gensynth_labels.png
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


@dataclass(frozen=True)
class Chromium:
    """Paths of a Chromium binary and its matching chromedriver."""

    binary: str
    driver: str


def find_chromium() -> Chromium | None:
    """Chromium + chromedriver from $GENSYNTH_CHROMIUM / $GENSYNTH_CHROMEDRIVER, else Debian's /usr/bin ones, else
    the PATH; None when either is missing."""
    def first(env: str, candidates: tuple[str, ...]) -> str | None:
        if os.environ.get(env):  # an explicit choice: that file or nothing
            return os.environ[env] if os.path.isfile(os.environ[env]) else None
        return next((p for p in candidates if p and os.path.isfile(p)), None)

    binary = first("GENSYNTH_CHROMIUM", ("/usr/bin/chromium", shutil.which("chromium") or "",
                                         shutil.which("chromium-browser") or ""))
    driver = first("GENSYNTH_CHROMEDRIVER", ("/usr/bin/chromedriver", shutil.which("chromedriver") or ""))
    if not binary or not driver:
        return None
    return Chromium(binary, driver)


class PaintPage:
    """The painting page in a headless Chromium. ``downloads``: where the page's downloads land."""

    def __init__(self, driver, downloads: Path, profile: Path):
        self.driver = driver
        self.downloads = Path(downloads)
        self._profile = profile

    @classmethod
    def open(cls, url: str, chromium: Chromium, downloads: str | Path, *, width: int = 1500,
             height: int = 950, timeout: float = 60) -> "PaintPage":
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        downloads = Path(downloads)
        downloads.mkdir(parents=True, exist_ok=True)
        profile = Path(tempfile.mkdtemp(prefix="gensynth-chromium-"))
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium.binary
        for flag in CHROMIUM_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={profile}")
        opts.add_argument(f"--window-size={width},{height}")
        opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                               "download.prompt_for_download": False})
        driver = webdriver.Chrome(service=Service(chromium.driver), options=opts)
        driver.set_page_load_timeout(timeout)
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        page = cls(driver, downloads, profile)
        driver.get(url)
        page.wait_for(lambda: page.js("return window.gensynthPaint && window.gensynthPaint.generations >= 1"),
                      timeout, "the page's first image")
        return page

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------------------------------------
    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait_for(self, condition, timeout: float = 30, what: str = "the page") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition():
                return
            time.sleep(0.02)
        errors = self.js("return window.gensynthPaint ? window.gensynthPaint.errors : []")
        raise TimeoutError(f"waited {timeout} s for {what}; page errors: {errors}")

    def probe(self) -> dict:
        return self.js("return window.gensynthPaint")

    def element(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def click(self, css: str) -> None:
        self.element(css).click()

    # ------------------------------------------------------------------------------------------
    def grid_size(self) -> tuple[int, int]:
        """(H, W) of the label canvas."""
        c = self.element("#labels")
        return int(c.get_attribute("height")), int(c.get_attribute("width"))

    def _offset(self, x: float, y: float, centre: bool = True) -> tuple[int, int]:
        """Pixel (x, y) of the label grid (its centre; with ``centre=False`` the grid point (x, y), e.g. a pixel
        corner) -> offset from the canvas centre in CSS pixels (what selenium 4 moves by)."""
        c = self.element("#labels")
        h, w = self.grid_size()
        rect = self.js("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", c)
        d = 0.5 if centre else 0.0
        return (round((x + d) * rect[0] / w - rect[0] / 2), round((y + d) * rect[1] / h - rect[1] / 2))

    def choose_tool(self, tool: str) -> None:
        self.click(f'button.tool[data-tool="{tool}"]')

    def choose_class(self, class_id: int) -> None:
        self.click(f'#palette li[data-id="{class_id}"]')

    def set_brush_size(self, size: int) -> None:
        self.js("const s = document.getElementById('brush-size'); s.value = arguments[0];"
                "s.dispatchEvent(new Event('input'));", int(size))

    def stroke(self, points: list[tuple[int, int]], *, size: int | None = None, tool: str = "brush") -> None:
        """Press at the first grid pixel, move through the others, release (a real pointer stroke)."""
        from selenium.webdriver.common.action_chains import ActionChains

        self.choose_tool(tool)
        if size is not None:
            self.set_brush_size(size)
        canvas = self.element("#labels")
        chain = ActionChains(self.driver, duration=10)
        chain.move_to_element_with_offset(canvas, *self._offset(*points[0])).click_and_hold()
        for p in points[1:]:
            chain.move_to_element_with_offset(canvas, *self._offset(*p))
        chain.release().perform()

    def polygon(self, corners: list[tuple[float, float]]) -> None:
        """Polygon tool: click each grid point (pixel corners), then Enter fills the pixels whose centre is inside."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        self.choose_tool("polygon")
        canvas = self.element("#labels")
        for x, y in corners:
            ActionChains(self.driver).move_to_element_with_offset(canvas, *self._offset(x, y, centre=False)) \
                .click().perform()
        ActionChains(self.driver).send_keys(Keys.ENTER).perform()

    def click_pixel(self, x: int, y: int) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).move_to_element_with_offset(self.element("#labels"), *self._offset(x, y)) \
            .click().perform()

    def wait_for_image(self, after: int, timeout: float = 30) -> None:
        """Wait until more than ``after`` generations are shown and no request is in flight."""
        self.wait_for(lambda: self.js("const p = window.gensynthPaint; return p.generations > arguments[0] && "
                                      "!p.busy;", after), timeout, "a new image")

    def generations(self) -> int:
        return int(self.js("return window.gensynthPaint.generations"))

    def image_png(self) -> bytes:
        """The shown generated image's PNG bytes (fetched from the page's blob URL)."""
        import base64

        b64 = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(document.getElementById('image').src).then(r => r.blob()).then(b => {"
            "  const f = new FileReader(); f.onload = () => done(f.result.split(',')[1]); f.readAsDataURL(b); });")
        return base64.b64decode(b64)

    def download(self, button_css: str, name: str, timeout: float = 20) -> Path:
        """Click a download button; return the file once Chromium has finished writing it."""
        target = self.downloads / name
        if target.exists():
            target.unlink()
        self.click(button_css)
        self.wait_for(lambda: target.exists() and target.stat().st_size > 0 and
                      not (self.downloads / (name + ".crdownload")).exists(), timeout, f"download {name}")
        return target

    def download_labels(self) -> Path:
        return self.download("#download-labels", "gensynth_labels.png")

    def download_image(self) -> Path:
        return self.download("#download-image", "gensynth_image.png")

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.js("window.scrollTo(0, 0)")
        self.driver.save_screenshot(str(path))
        return path
