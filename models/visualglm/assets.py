"""Which weights and which tokenizer a VisualGLM command uses, and the options that choose them."""
from __future__ import annotations

from pathlib import Path

from porter.errors import InputError

CHATGLM_TOKENIZER = "THUDM/chatglm-6b"  # what the release's model_config.json names
STANDIN = "porter-standin"  # porter's tiny checkpoints: the built-in stand-in of ChatGLM-6B's ice_text.model
OLD_TINY = "porter-tiny"  # porter 0.1's tiny tokenizer, whose ids were offset by 20,000


def add_weight_arguments(p, dtype: bool = True) -> None:
    """--from_pretrained, --chatglm_path and (unless the recipe decides precision otherwise) --dtype."""
    p.add_argument("--from_pretrained", "--from-pretrained", type=Path, metavar="DIR",
                   help="a SAT checkpoint folder (latest, model_config.json, <iter>/), e.g. the released glm/visualglm")
    p.add_argument("--chatglm_path", "--chatglm-path", type=Path, metavar="DIR",
                   help="the folder holding ChatGLM-6B's ice_text.model (porter's tiny checkpoints need none)")
    if dtype:
        p.add_argument("--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto",
                       help="weights in this dtype (auto: fp16 on NPU/CUDA, bf16 where fp16 is unsupported, fp32 on "
                            "CPU; bf16 on CPU with --quant)")
    p.add_argument("--quant", type=int, choices=(4, 8), default=None, metavar="{4,8}",
                   help="the language model's linear layers in 8 or 4 bits (SAT's weight-only scheme, quantized as "
                        "the 16-bit checkpoint is read, or loaded as a quantized checkpoint stores them); the image "
                        "encoder, embeddings and lm_head stay in --dtype")


def tokenizer_type_of(ckpt) -> str:
    """The tokenizer a checkpoint names; the release's model_config.json says THUDM/chatglm-6b."""
    return ckpt.sat_args.get("tokenizer_type", CHATGLM_TOKENIZER)


def model_source(args):
    """(config, tokenizer_type, checkpoint or None) for --from_pretrained or --preset, reading no weights: the
    checkpoint's keys and shapes are checked (memory-mapped)."""
    from .checkpoint import check_checkpoint
    from .config import preset

    if args.from_pretrained and not getattr(args, "resume", False):
        ckpt = check_checkpoint(args.from_pretrained, getattr(args, "quant", None))[0]
        return ckpt.config, tokenizer_type_of(ckpt), ckpt
    return preset(args.preset), STANDIN if args.preset == "tiny" else CHATGLM_TOKENIZER, None


def tokenizer_for(tokenizer_type: str, chatglm_path: Path | None):
    """The tokenizer a checkpoint needs: --chatglm_path when given, else the stand-in for porter's tiny models."""
    from .standin_tokenizer import standin_tokenizer_dir
    from .tokenizer import ChatGLMTokenizer

    if chatglm_path:
        return ChatGLMTokenizer(chatglm_path)
    if tokenizer_type == STANDIN:
        return ChatGLMTokenizer(standin_tokenizer_dir())
    if tokenizer_type == OLD_TINY:
        raise InputError("this checkpoint was trained with porter 0.1's tiny tokenizer, whose ids were offset by "
                         "20,000: it does not match ChatGLM-6B's ids", hint="train it again with this porter")
    raise InputError("this checkpoint uses ChatGLM-6B's tokenizer: pass --chatglm_path DIR",
                     hint="the folder holding ice_text.model (no need to edit tokenizer_type in model_config.json)")
