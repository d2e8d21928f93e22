"""segmorph: medical image segmentation and registration (public API)."""

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image, Sample
from segmorph.io import read_image, write_image

__version__ = "0.1.0"

__all__ = ["Affine", "Image", "Sample", "SegmorphError", "read_image", "write_image", "__version__"]
