"""Commands that write files rather than train: config converters."""
