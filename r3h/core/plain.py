"""Plain Python values from what Hydra hands over."""

from omegaconf import DictConfig, ListConfig, OmegaConf


def to_container(x):
    """Plain Python containers (dicts, lists) from OmegaConf values; anything else as is."""
    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    return x
