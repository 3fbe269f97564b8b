"""Head method 'qpm' (being implemented)."""
