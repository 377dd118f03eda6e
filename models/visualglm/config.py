"""VisualGLM sizes: every part configurable, two presets, and SAT's model_config.json format both ways."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from porter.errors import InputError, PorterError

from . import tokenizer as tok

FINETUNE_MODES = ("lora", "ptuning", "full")


@dataclass(frozen=True)
class VisionConfig:
    """EVA ViT."""
    layers: int = 39
    hidden: int = 1408
    heads: int = 16
    mlp: int = 6144
    image_size: int = 224
    patch_size: int = 14
    eps: float = 1e-6


@dataclass(frozen=True)
class QFormerConfig:
    """BLIP-2 Q-Former: learnt query tokens that cross-attend to the ViT (every ``cross_every`` layers)."""
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    queries: int = 32
    cross_every: int = 2
    eps: float = 1e-12
    # BLIP-2's Q-Former is post-LN (BERT). Trained from scratch, post-LN drowns the small cross-attention output
    # in the normalised query stream; pre-LN lets the image through from the first step (the tiny preset).
    layernorm_order: str = "post"


@dataclass(frozen=True)
class LanguageConfig:
    """ChatGLM."""
    layers: int = 28
    hidden: int = 4096
    heads: int = 32
    inner: int = 16384
    vocab: int = tok.VOCAB_SIZE
    max_sequence_length: int = 2048


@dataclass(frozen=True)
class VisualGLMConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    lm: LanguageConfig = field(default_factory=LanguageConfig)

    @property
    def image_length(self) -> int:
        """How many pad positions after <img> the image features replace."""
        return self.qformer.queries

    # -- SAT's model_config.json -----------------------------------------------------------------------
    def sat_args(self) -> dict:
        v, q, lm = self.vision, self.qformer, self.lm
        return {
            "model_class": "VisualGLMModel", "tokenizer_type": "THUDM/chatglm-6b",
            "num_layers": lm.layers, "hidden_size": lm.hidden, "num_attention_heads": lm.heads,
            "inner_hidden_size": lm.inner, "vocab_size": lm.vocab, "layernorm_order": "post",
            "model_parallel_size": 1, "max_sequence_length": lm.max_sequence_length,
            "bos_token_id": tok.BOS, "mask_token_id": tok.MASK, "gmask_token_id": tok.GMASK,
            "pad_token_id": tok.PAD, "image_length": q.queries,
            "eva_args": {"num_layers": v.layers, "hidden_size": v.hidden, "num_attention_heads": v.heads,
                         "inner_hidden_size": v.mlp, "vocab_size": 1, "layernorm_order": "pre",
                         "model_parallel_size": 1, "use_final_layernorm": False, "layernorm_epsilon": v.eps,
                         "image_size": [v.image_size, v.image_size], "pre_len": 1, "post_len": 0,
                         "in_channels": 3, "num_classes": 0, "patch_size": v.patch_size},
            "qformer_args": {"num_layers": q.layers, "hidden_size": q.hidden, "num_attention_heads": q.heads,
                             "vocab_size": q.queries, "layernorm_order": q.layernorm_order, "model_parallel_size": 1,
                             "max_sequence_length": 0, "layernorm_epsilon": q.eps,
                             "is_decoder": [i % q.cross_every == 0 for i in range(q.layers)],
                             "cross_attn_hidden_size": v.hidden},
        }

    @classmethod
    def from_sat_args(cls, args: dict, source: str = "model_config.json") -> VisualGLMConfig:
        """Read SAT's model_config.json (the released VisualGLM-6B one included)."""
        try:
            eva, qf = args["eva_args"], args["qformer_args"]
            size = eva.get("image_size", [224, 224])
            is_decoder = qf.get("is_decoder", [True] * qf["num_layers"])
            if is_decoder is True:  # SAT: a single bool applies to every layer
                is_decoder = [True] * qf["num_layers"]
            if not isinstance(is_decoder, list) or not any(is_decoder):
                raise ValueError(f"'qformer_args.is_decoder' {is_decoder!r}: the Q-Former must cross-attend to the "
                                 f"image in some layer")
            cross = [i for i, d in enumerate(is_decoder) if d]
            every = cross[1] - cross[0] if len(cross) > 1 else qf["num_layers"]
            if is_decoder != [i % every == 0 for i in range(qf["num_layers"])]:
                raise ValueError(f"'qformer_args.is_decoder' {is_decoder}: cross-attention every n-th layer from "
                                 f"layer 0 is what VisualGLM uses")
            vision = VisionConfig(layers=eva["num_layers"], hidden=eva["hidden_size"], heads=eva["num_attention_heads"],
                                  mlp=eva.get("inner_hidden_size") or 4 * eva["hidden_size"],
                                  image_size=size[0] if isinstance(size, list) else size,
                                  patch_size=eva.get("patch_size", 14), eps=eva.get("layernorm_epsilon", 1e-6))
            qformer = QFormerConfig(layers=qf["num_layers"], hidden=qf["hidden_size"], heads=qf["num_attention_heads"],
                                    queries=args.get("image_length", qf.get("vocab_size", 32)),
                                    cross_every=every,
                                    eps=qf.get("layernorm_epsilon", 1e-12),
                                    layernorm_order=qf.get("layernorm_order", "post"))
            lm = LanguageConfig(layers=args["num_layers"], hidden=args["hidden_size"],
                                heads=args["num_attention_heads"],
                                inner=args.get("inner_hidden_size") or 4 * args["hidden_size"],
                                vocab=args["vocab_size"], max_sequence_length=args.get("max_sequence_length", 2048))
        except ValueError as exc:
            raise InputError(f"{source}: {exc}") from None
        except (KeyError, TypeError, IndexError) as exc:
            raise InputError(f"{source}: missing or malformed field {exc}",
                              hint="expected SAT's model_config.json of a VisualGLM model") from None
        return cls(vision, qformer, lm)

    def to_json(self) -> dict:
        return asdict(self)


PRESETS = {
    # The released architecture: about 7.8e9 parameters.
    "visualglm-6b": VisualGLMConfig(),
    # Trains on a laptop CPU in seconds; same code paths, ChatGLM's real vocabulary. 7-pixel patches (64 per
    # image): at 14 the demo named colours right 61 % of the time, at 7 83 %.
    "tiny": VisualGLMConfig(
        vision=VisionConfig(layers=2, hidden=64, heads=4, mlp=128, image_size=56, patch_size=7),
        qformer=QFormerConfig(layers=2, hidden=64, heads=4, queries=8, cross_every=1, layernorm_order="pre"),
        lm=LanguageConfig(layers=2, hidden=64, heads=4, inner=128, max_sequence_length=256),
    ),
}


PRESET_NAMES = tuple(PRESETS)


def preset(name: str) -> VisualGLMConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise PorterError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


__all__ = ["VisionConfig", "QFormerConfig", "LanguageConfig", "VisualGLMConfig", "PRESETS", "PRESET_NAMES", "preset",
           "replace"]
