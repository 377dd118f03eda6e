"""porter_visualglm: the VisualGLM-6B model plugin (model, tokenizer, data, checkpoints, recipes)."""
