"""The YAML presets shipped with medft (read with importlib.resources)."""
from importlib import resources
from pathlib import Path


def preset_path(name: str) -> Path:
    """A YAML preset shipped in configs/ (installed with the package)."""
    return Path(str(resources.files("configs") / name))
