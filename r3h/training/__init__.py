"""Training: DPO (`train_dpo`, TRL's DPOTrainer with the paper's recipe) and SFT
(`train_sft`), and the fusion_bench algorithms that run them on a model pool."""

from r3h.training.dpo import BETA_GRID, LR_GRID, PAPER_RECIPE, train_dpo
from r3h.training.sft import train_sft

__all__ = ["PAPER_RECIPE", "BETA_GRID", "LR_GRID", "train_dpo", "train_sft"]
