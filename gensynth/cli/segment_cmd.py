"""``gensynth segment``: the OASIS discriminator of a run as a semantic segmenter of unlabelled images."""
from __future__ import annotations

from pathlib import Path

import click

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path: Path, size: tuple[int, int]):
    """An image file -> (1, 3, H, W) in [-1, 1] at ``size`` (bicubic); DataError naming the file."""
    import numpy as np
    import torch
    from PIL import Image

    from gensynth.errors import DataError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BICUBIC)
            a = np.asarray(im, dtype=np.float32)
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1


@click.command()
@click.option("--checkpoint", "-c", required=True, help="run directory or checkpoint directory")
@click.option("--images", "-i", required=True, type=click.Path(exists=True), help="an image or a folder of images")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--resynthesize", is_flag=True, help="also feed each predicted layout to the generator")
@click.option("--seed", default=0, show_default=True, type=int, help="noise seed for --resynthesize")
@click.option("--device", default="auto", show_default=True)
def command(checkpoint, images, out, resynthesize, seed, device):
    """Segment images with a run's discriminator (argmax over the N real classes; the fake channel is ignored).

    Writes <name>_ids.png (model class ids), <name>_overlay.png and, with --resynthesize, <name>_resynth.png.
    """
    import numpy as np
    import torch
    from PIL import Image
    from rich.console import Console

    from gensynth.api import load_model, resolve_device
    from gensynth.errors import DataError
    from gensynth.eval.evaluate import _channel_to_dataset_ids
    from gensynth.eval.segmenters import DiscriminatorSegmenter
    from gensynth.generate.api import Synthesizer
    from gensynth.generate.sheet import colorize, overlay, palette, to_pil

    dev = resolve_device(device)
    m = load_model(checkpoint, device=dev, with_discriminator=True)
    spec, n = m.parts.dataset, m.parts.num_classes
    seg = DiscriminatorSegmenter(m.discriminator, n)
    size = tuple(m.config.data.size or spec.default_size)
    src = Path(images)
    files = [src] if src.is_file() else sorted(f for f in src.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{src} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    syn = Synthesizer(m.generator, m.parts, size=size, device=dev) if resynthesize else None
    colours = palette(spec.classes)
    for i, f in enumerate(files):
        x = read_image(f, size).to(dev)
        with torch.no_grad():
            pred = seg(x).argmax(1)
        ids = _channel_to_dataset_ids(pred, n, spec.dontcare, m.parts.dontcare_last)[0].cpu()
        Image.fromarray(ids.numpy().astype(np.uint8 if n <= 256 else np.uint16)).save(out_dir / f"{f.stem}_ids.png")
        overlay(to_pil(x.cpu())[0], colorize(ids, colours)).save(out_dir / f"{f.stem}_overlay.png")
        if syn is not None:
            to_pil(syn.generate(ids.unsqueeze(0), seed=seed + i))[0].save(out_dir / f"{f.stem}_resynth.png")
    Console(stderr=True).print(f"segmented {len(files)} images into {out_dir}", highlight=False)
