"""Where the plugin's shipped files are."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
SHAPES_DIR = PACKAGE_DIR / "data" / "shapes"  # built by data/make_shapes.py
