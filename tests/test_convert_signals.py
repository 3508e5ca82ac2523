"""Conversion worker processes do not inherit the trainer's SIGTERM/SIGINT handlers.

With the trainer's handlers (gensynth.train.signals.StopRequest) installed, a conversion that fails on a bad
sample shuts its pool down with SIGTERM; workers that had inherited the handler would only note a "stop request"
and the shutdown would wait for them forever (the reported hang). The child process must finish quickly."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from conftest import CHILD_ENV
from test_data_convert import make_cityscapes, save_png

_CHILD = textwrap.dedent("""
    import sys
    from gensynth.data.convert import ConvertOptions, convert
    from gensynth.errors import DataError
    from gensynth.train.signals import StopRequest
    from gensynth_datasets.cityscapes import CityscapesSpec

    root, out = sys.argv[1], sys.argv[2]
    stop = StopRequest()  # as in a trainer converting a raw layout on first use
    for attempt in range(int(sys.argv[3])):
        try:
            convert(CityscapesSpec(), root, "train", out, ConvertOptions(workers=2, shard_size=4, progress=False))
        except DataError as exc:
            print("refused:", str(exc).splitlines()[0], flush=True)
    print("ready", flush=True)
    if sys.argv[4] == "wait":  # then a real SIGTERM converts nothing further and stops the process cleanly
        import time
        while not stop.requested:
            time.sleep(0.02)
        print("stopped by", stop.requested, flush=True)
""")


def _dataset(tmp_path):
    make_cityscapes(tmp_path / "cs", n=16)
    bad = tmp_path / "cs/gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    save_png(bad, np.full((16, 32), 40, np.uint8))  # an unknown label value: the conversion fails early
    return bad


def test_failed_conversion_under_the_trainers_handlers_does_not_hang(tmp_path):
    bad = _dataset(tmp_path)
    env = {**os.environ, **CHILD_ENV}
    # its own process group, so that hung workers (without the fix) can be killed with it
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "cs"), str(tmp_path / "out"), "6", "exit"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the conversion pool's shutdown hung (workers ignored SIGTERM)") from None
    assert proc.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert lines.count(f"refused: {bad}: label value 40 is not one of the cityscapes ids "
                       f"(found 1 unknown value(s): [40]; allowed: 0..33)") == 6, out
    assert lines[-1] == "ready"


def test_sigterm_after_a_failed_conversion_reaches_the_trainer(tmp_path):
    _dataset(tmp_path)
    env = {**os.environ, **CHILD_ENV}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "cs"), str(tmp_path / "out"), "2", "wait"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        seen = b""  # read the pipe itself (os.read), not a buffered reader that select() cannot see into
        deadline = time.time() + 60
        while b"ready\n" not in seen:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
            assert ready, "the conversion pool's shutdown hung (workers ignored SIGTERM)"
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, proc.stderr.read().decode()[-3000:]
            seen += chunk
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        out, err = (seen + out).decode(), err.decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "stopped by SIGTERM"
