"""Where the plugin's shipped files are."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
SHAPES_DIR = PACKAGE_DIR / "data" / "shapes"  # built by data/make_shapes.py
TINY_IMAGE_ENCODER = PACKAGE_DIR / "data" / "tiny-image-encoder.pt"  # pretrained by data/make_image_encoder.py
