"""The package version, in a leaf module so report pages can name it without importing retrofit."""

__version__ = "0.1.0"
