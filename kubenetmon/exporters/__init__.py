"""Built-in exporters, one folder each."""
