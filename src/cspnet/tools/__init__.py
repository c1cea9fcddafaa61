"""Tools around the models: profiling, checkpoints, weight import."""
