"""Our own parts. Each module is a plugin that registers through the public hooks."""
