"""Built-in extensions, one folder each."""
