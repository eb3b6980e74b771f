"""Built-in receivers, one folder each."""
