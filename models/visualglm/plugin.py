"""Entry point of the VisualGLM model plugin."""
