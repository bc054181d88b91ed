"""The one training loop every model and experiment uses."""
