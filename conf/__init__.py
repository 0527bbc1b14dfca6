"""hydratune's config groups, one folder per axis (YAML options); installed as the package trainer.conf."""
