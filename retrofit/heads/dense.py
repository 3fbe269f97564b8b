"""Head method 'dense' (being implemented)."""
