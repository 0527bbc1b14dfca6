"""A resolved config -> a training run: the pipeline, objectives, checkpoints and the pre-flight estimate."""
