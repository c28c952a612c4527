"""The training engine: config, data, parameter selection, original-model access, trainer."""
