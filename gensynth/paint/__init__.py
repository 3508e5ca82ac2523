"""``gensynth paint``: a local web page to paint label maps and see a trained generator's images follow.

:mod:`gensynth.paint.protocol` is what the page sends (JSON, base64 grids); :mod:`gensynth.paint.session` holds
the warm model and turns requests into images and label PNGs; :mod:`gensynth.paint.server` is the standard-library
HTTP server; :mod:`gensynth.paint.browser` drives the page in headless Chromium (tests, benchmark, screenshots).
``static/`` holds the page: an HTML canvas painted through ImageData on an integer class-id grid, so strokes are
never antialiased. See docs/paint.md.
"""
