"""The YAML presets shipped with medft (read with importlib.resources)."""
