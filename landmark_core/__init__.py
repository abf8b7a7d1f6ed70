"""landmark_core: recognise the landmark in a photo and say where it is. No Ray import here."""

__version__ = "0.1.0"
