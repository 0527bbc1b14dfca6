"""hydratune: declarative, Hydra-composed fine-tuning of large language models (see CONTRIBUTING.md for the rooms)."""
