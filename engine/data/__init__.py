"""Data: index a dataset (sources), decode images (images), batch them (loaders), check them (check)."""
