"""porter_visualglm: the VisualGLM-6B model plugin (model, tokenizer, data, checkpoints, recipes)."""


def import_sat() -> None:
    """Import SAT (and DeepSpeed through it) with stdout pointing at stderr: both bind their log handlers to the
    stdout they see at import, and a recipe's stdout carries its answer alone (it can be piped). DeepSpeed is told
    the device porter selected: left to guess, it warns that it found no GPU and falls back to the CPU."""
    import contextlib
    import os
    import sys

    from porter.runtime import device

    os.environ.setdefault("DS_ACCELERATOR", device.current().deepspeed_accelerator)
    with contextlib.redirect_stdout(sys.stderr):
        import sat  # noqa: F401
