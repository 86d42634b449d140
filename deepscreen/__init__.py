"""deepscreen: tells real face photos from AI-generated or manipulated ones.

The kernel (this package) holds what every app shares: settings, errors, image
decoding, the LiteRT serving class and the command-line entry point. It imports
nothing from the apps (`worker`, `training`, `dashboard`).
"""

__version__ = "0.1.0"
