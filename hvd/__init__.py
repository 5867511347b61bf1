"""hvd: a compute daemon for small virtualization labs."""
__version__ = "0.1.0"
