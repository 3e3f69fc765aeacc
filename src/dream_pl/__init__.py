"""dream-pl: dataset distillation by representative matching (DREAM) on PyTorch Lightning + Hydra."""

from dream_pl.synthetic import SyntheticData, load_synthetic, save_synthetic

__version__ = "0.1.0"
__all__ = ["SyntheticData", "__version__", "load_synthetic", "save_synthetic"]
