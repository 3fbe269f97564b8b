"""Head method 'qsenn' (being implemented)."""
