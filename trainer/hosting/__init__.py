"""Serving and exporting a trained model: hydratune serve, its benchmark, merged folders and GGUF."""
