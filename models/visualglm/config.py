"""VisualGLM sizes: every part configurable, two presets, and SAT's model_config.json format both ways."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from porter.errors import InputError, PorterError

from . import tokenizer as tok

FINETUNE_MODES = ("lora", "ptuning", "full")
LAYERNORM_ORDERS = ("pre", "post", "sandwich")  # what SAT's BaseTransformerLayer accepts
_REQUIRED = object()


def _kind(value) -> str:
    """How a JSON value reads in an error: 'a list', "the string 'two'", 'the number -3'."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _positive_int(value, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # true and false are not counts here
        raise ValueError(f"'{path}' is {_kind(value)}: expected a whole number above 0")
    return value


class _Section:
    """One object of model_config.json whose fields are read with their type checked; errors name the field by its
    path in the file ('eva_args.num_layers') and say what was found."""

    def __init__(self, data, prefix: str):
        if not isinstance(data, dict):
            raise ValueError(f"{(repr(prefix.rstrip('.')) + ' is ') if prefix else ''}{_kind(data)}: expected an "
                             f"object of SAT's arguments")
        self.data, self.prefix = data, prefix

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    def _value(self, key: str, default):
        if key not in self.data or (self.data[key] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                raise KeyError(self.prefix + key)
            return default, False
        return self.data[key], True

    def section(self, key: str) -> _Section:
        value, _ = self._value(key, _REQUIRED)
        return _Section(value, f"{self.prefix}{key}.")

    def size(self, key: str, default=_REQUIRED) -> int:
        """A count or width: a whole number above 0."""
        value, given = self._value(key, default)
        return _positive_int(value, self.prefix + key) if given else value

    def number(self, key: str, default=_REQUIRED) -> float:
        """A positive number (an epsilon)."""
        value, given = self._value(key, default)
        if given and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"'{self.prefix}{key}' is {_kind(value)}: expected a number above 0")
        return value

    def text(self, key: str, default=_REQUIRED, choices: tuple[str, ...] | None = None) -> str:
        value, given = self._value(key, default)
        if given and (not isinstance(value, str) or (choices and value not in choices)):
            expected = f"one of {', '.join(choices)}" if choices else "a string"
            raise ValueError(f"'{self.prefix}{key}' is {_kind(value)}: expected {expected}")
        return value


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
        """Read SAT's model_config.json (the released VisualGLM-6B one included). Every field porter reads is
        checked for its type and range here, so a hand-edited file is one error naming the field, not a
        traceback from deep inside the model's constructor."""
        try:
            top = _Section(args, "")
            top.text("model_class", None)
            top.text("tokenizer_type", None)
            eva, qf = top.section("eva_args"), top.section("qformer_args")
            size = eva.get("image_size", 224)
            sides = size if isinstance(size, list) and len(size) in (1, 2) else [size]  # SAT: [h, w] or one side
            image_size = [_positive_int(side, "eva_args.image_size") for side in sides][0]
            q_layers = qf.size("num_layers")
            is_decoder = qf.get("is_decoder", [True] * q_layers)
            if is_decoder is True:  # SAT: a single bool applies to every layer
                is_decoder = [True] * q_layers
            if not isinstance(is_decoder, list) or not any(is_decoder):
                raise ValueError(f"'qformer_args.is_decoder' {is_decoder!r}: the Q-Former must cross-attend to the "
                                 f"image in some layer")
            if not all(isinstance(d, bool) for d in is_decoder):
                raise ValueError(f"'qformer_args.is_decoder' {is_decoder!r}: expected true or false per layer")
            cross = [i for i, d in enumerate(is_decoder) if d]
            every = cross[1] - cross[0] if len(cross) > 1 else q_layers
            if is_decoder != [i % every == 0 for i in range(q_layers)]:
                raise ValueError(f"'qformer_args.is_decoder' {is_decoder}: cross-attention every n-th layer from "
                                 f"layer 0 is what VisualGLM uses")
            v_hidden = eva.size("hidden_size")
            vision = VisionConfig(layers=eva.size("num_layers"), hidden=v_hidden,
                                  heads=eva.size("num_attention_heads"),
                                  mlp=eva.size("inner_hidden_size", None) or 4 * v_hidden,
                                  image_size=image_size, patch_size=eva.size("patch_size", 14),
                                  eps=eva.number("layernorm_epsilon", 1e-6))
            qformer = QFormerConfig(layers=q_layers, hidden=qf.size("hidden_size"),
                                    heads=qf.size("num_attention_heads"),
                                    queries=top.size("image_length", None) or qf.size("vocab_size", 32),
                                    cross_every=every,
                                    eps=qf.number("layernorm_epsilon", 1e-12),
                                    layernorm_order=qf.text("layernorm_order", "post", LAYERNORM_ORDERS))
            hidden = top.size("hidden_size")
            lm = LanguageConfig(layers=top.size("num_layers"), hidden=hidden,
                                heads=top.size("num_attention_heads"),
                                inner=top.size("inner_hidden_size", None) or 4 * hidden,
                                vocab=top.size("vocab_size"), max_sequence_length=top.size("max_sequence_length", 2048))
        except ValueError as exc:
            raise InputError(f"{source}: {exc}") from None
        except KeyError as exc:
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


# The image encoder's two parts and the prefix of their parameters' names in SAT's layout (the released checkpoint's
# keys, and the model's own parameter names): --vision-lr-scale / --qformer-lr-scale find their parameters by it,
# and an image-encoder file holds exactly these. One table for both.
ENCODER_PARTS = {"vit": "mixins.eva.model.vit.", "qformer": "mixins.eva.model.qformer."}
