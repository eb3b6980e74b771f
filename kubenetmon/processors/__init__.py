"""Built-in processors, one folder each."""
