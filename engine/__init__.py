"""medft's engine: config, data, models, the one training loop, the grid and the report."""
