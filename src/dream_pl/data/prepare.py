"""``python -m dream_pl.data.prepare imagenet --data-dir data --nclass 100 --size 64``: convert once.

A folder of your own images: ``python -m dream_pl.data.prepare folder --data-dir data --root <path>
[--size 32] [--channels 3] [--test-split val|test]``; a run reads the copy with the same ``data_dir`` and
``dataset.options``, as long as the tree's files are unchanged.

The format and the conversion are :mod:`dream_pl.data.prepared`; finding the raw files is
:func:`dream_pl.data.sources.prepare_dataset`. This module is only the command, so the two stay free of
each other's imports.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from dream_pl.data.sources import prepare_dataset


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: prepare a dataset (any known one; the ImageNet folders are where it pays)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="dataset name, e.g. imagenet, imagenet_subset, folder, cifar100")
    parser.add_argument("--data-dir", required=True, help="where the raw files are; prepared/ goes here")
    parser.add_argument("--size", type=int, default=None, help="side in pixels (ImageNet sets, folder)")
    parser.add_argument("--nclass", type=int, default=None, help="imagenet: the first N classes (sorted)")
    parser.add_argument("--root", default=None, help="folder: holds train/<class>/ and val/ or test/")
    parser.add_argument("--channels", type=int, default=None, help="folder: 1 (greyscale) or 3 (colour)")
    parser.add_argument("--test-split", default=None, help="folder: val or test, where both are present")
    args = parser.parse_args(argv)
    keys = ("size", "nclass", "root", "channels", "test_split")
    options = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    try:
        folder = prepare_dataset(args.name, Path(args.data_dir), **options)
    except (FileNotFoundError, TypeError, ValueError, KeyError) as err:
        print(f"error: {err}")
        raise SystemExit(2) from None
    print(f"prepared: {folder}")


if __name__ == "__main__":
    main()
