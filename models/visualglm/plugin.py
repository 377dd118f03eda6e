"""Entry point of the VisualGLM model plugin: the model, its data formats and its recipes."""
from __future__ import annotations

from pathlib import Path

import porter
from porter.recipes import DatasetFormat, Model, Recipe

from . import check, convert, demo, evaluate, infer, serve, train


def _detect(fmt: str):
    def detect(path) -> bool:
        from .data import DataError, detect_format

        try:
            return detect_format(Path(path)) == fmt
        except DataError:
            return False
    return detect


@porter.hookimpl
def porter_register_models(register):
    register(Model("visualglm", "VisualGLM-6B: EVA ViT + BLIP-2 Q-Former + ChatGLM-6B, on SAT",
                   presets=("visualglm-6b", "tiny")))


@porter.hookimpl
def porter_register_datasets(register):
    register(DatasetFormat("fewshot", "visualglm", "a JSON list of {img, prompt, label}", _detect("fewshot")))
    register(DatasetFormat("coco", "visualglm", "COCO 2017 captions (annotations/ + train2017/)", _detect("coco")))


@porter.hookimpl
def porter_register_recipes(register):
    register(Recipe("visualglm", "infer", "answer a question about an image, streamed token by token",
                    infer.add_arguments, infer.run, epilog=infer.EPILOG, targets=("sat",)))
    register(Recipe("visualglm", "train", "fine-tune VisualGLM through SAT's training_main and DeepSpeed on 1..N "
                    "devices", train.add_arguments, train.run, epilog=train.EPILOG, launch=True, targets=("sat",),
                    preflight=train.preflight))
    register(Recipe("visualglm", "serve", "serve the model over HTTP: OpenAI's chat completions, upstream's api.py "
                    "protocol and a chat page", serve.add_arguments, serve.run, epilog=serve.EPILOG, targets=("sat",)))
    register(Recipe("visualglm", "eval", "answer a data set's questions in greedy batches and score them (BLEU-4, "
                    "ROUGE-L, CIDEr; colour and shape on the shapes set); --compare a second checkpoint",
                    evaluate.add_arguments, evaluate.run, epilog=evaluate.EPILOG, targets=("sat",)))
    register(Recipe("visualglm", "check", "will a checkpoint folder and tokenizer work here? keys, shapes, tokenizer "
                    "layout, memory; in seconds, loading no weights", check.add_arguments, check.run,
                    epilog=check.EPILOG, targets=("sat",)))
    register(Recipe("visualglm", "convert", "between checkpoint layouts: SAT <-> Hugging Face, LoRA merged, "
                    "model-parallel ranks merged or split; streamed, written atomically", convert.add_arguments,
                    convert.run, epilog=convert.EPILOG, targets=("sat",)))
    register(Recipe("visualglm", "demo", "patch SAT, train the tiny model on 2 CPU processes, answer held-out "
                    "images, revert", demo.add_arguments, demo.run, epilog=demo.EPILOG))
