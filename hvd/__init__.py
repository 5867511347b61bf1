"""hvd: a compute daemon for small virtualization labs."""
__version__ = "0.2.0"
