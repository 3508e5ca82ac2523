"""``gensynth generate``: label maps -> images, with global/local noise control and interpolation."""
from __future__ import annotations

from pathlib import Path

import click


def _is_shards(path: str) -> bool:
    p = Path(path)
    return path.endswith(".tar") or "{" in path or "://" in path or (p.is_dir() and any(p.glob("*.tar")))


def _label_sets(syn, labels: str, fit: str = "resize"):
    """Yield (stem, ids (1, H, W)) from a PNG, a folder of PNGs, or shards (the dataset's validation split)."""
    if _is_shards(labels):
        from gensynth.config import DataConfig
        from gensynth.data.loader import eval_batches

        cfg = DataConfig(name=syn.spec.name, root=labels, num_workers=0, size=tuple(syn.size))
        for batch in eval_batches(cfg, syn.spec, batch_size=1):
            yield batch.keys[0], batch.label
        return
    from gensynth.generate.labels import list_label_files, read_label_map

    for f in list_label_files(labels, syn.spec):
        yield f.stem, read_label_map(f, syn.spec, syn.size, syn.size_multiple, fit=fit).unsqueeze(0)


@click.command()
@click.option("--checkpoint", "-c", required=True, help="run directory or checkpoint directory")
@click.option("--labels", "-l", required=True,
              help="label PNG (dataset raw ids, or a colour mask in the dataset's class colours), a folder of them "
                   "(files named by the dataset's rule, e.g. *_gtFine_labelIds.png), or shards")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="output directory")
@click.option("--samples", "-k", default=1, show_default=True, type=click.IntRange(1), help="images per label map")
@click.option("--seed", default=None, type=int, help="noise seed (repeatable output)")
@click.option("--no-ema", is_flag=True, help="use the raw generator instead of the EMA one")
@click.option("--resample-class", default=None, help="re-sample the noise only inside this class (id or name)")
@click.option("--resample-mask", default=None, type=click.Path(exists=True, dir_okay=False),
              help="re-sample the noise only inside this mask PNG (non-zero = inside)")
@click.option("--interpolate", "interp", default=None, type=click.IntRange(2),
              help="interpolate between two noise vectors in N steps")
@click.option("--native-size", is_flag=True,
              help="generate at each label file's own size (sides must be multiples of the model's) instead of "
                   "resizing it (nearest) to the training size")
@click.option("--device", default="auto", show_default=True)
def command(checkpoint, labels, out, samples, seed, no_ema, resample_class, resample_mask, interp, native_size,
            device):
    """Generate images from label maps with a trained model.

    \b
    Examples:
      gensynth generate -c runs/oasis-demo -l label.png -o out/ --samples 4 --seed 0
      gensynth generate -c runs/oasis-demo -l label.png -o out/ --resample-class sky --samples 4
      gensynth generate -c runs/oasis-demo -l labels/ -o out/ --interpolate 8
    """
    from rich.console import Console

    from gensynth.api import resolve_device
    from gensynth.errors import ConfigError
    from gensynth.generate.api import Synthesizer
    from gensynth.generate.sheet import contact_sheet, to_pil

    if resample_class is not None and resample_mask is not None:
        raise ConfigError("use either --resample-class or --resample-mask, not both")
    if interp is not None and (resample_class is not None or resample_mask is not None):
        raise ConfigError("--interpolate cannot be combined with --resample-class/--resample-mask")
    console = Console(stderr=True)
    syn = Synthesizer.from_checkpoint(checkpoint, device=resolve_device(device), ema=not no_ema)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    written = 0
    for index, (stem, ids) in enumerate(_label_sets(syn, labels, "keep" if native_size else "resize")):
        s = None if seed is None else seed + index
        label_img = syn.colorize(ids[0])
        label_img.save(out_dir / f"{stem}_label.png")
        if resample_class is not None or resample_mask is not None:
            region = resample_class if resample_class is not None else Path(resample_mask)
            edit = syn.resample_region(ids, region, samples=samples, seed=s)
            images = [to_pil(edit.base)[0]] + to_pil(edit.samples[0])
            names = [f"{stem}_base.png"] + [f"{stem}_resample{k:02d}.png" for k in range(samples)]
        elif interp is not None:
            images = to_pil(syn.interpolate(ids, interp, seed=s)[0])
            names = [f"{stem}_interp{k:02d}.png" for k in range(interp)]
        else:
            images = to_pil(syn.generate(ids, samples=samples, seed=s)[0])
            names = [f"{stem}_{k:02d}.png" for k in range(samples)]
        for im, name in zip(images, names):
            im.save(out_dir / name)
        written += len(images)
        rows.append([label_img] + images)
    sheet = contact_sheet(rows)
    sheet.save(out_dir / "contact_sheet.png")
    console.print(f"wrote {written} images for {len(rows)} label maps and contact_sheet.png to {out_dir} "
                  f"(generator from {syn.source})", highlight=False)
