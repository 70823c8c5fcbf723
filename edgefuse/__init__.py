"""edgefuse: a real-time edge streaming pipeline for multi-sensor fusion."""

__version__ = "0.1.0"
