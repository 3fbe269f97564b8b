"""Head method 'sparse' (being implemented)."""
