"""One module per fine-tuning provider, named like its ``hardware.provider`` value (see launchers/cloud/provider.py)."""
