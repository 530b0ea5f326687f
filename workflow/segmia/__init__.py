"""segmia: membership inference attacks and defences on semantic segmentation models."""

__version__ = "0.1.0"
