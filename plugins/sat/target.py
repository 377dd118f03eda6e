"""The installed SwissArmyTransformer, as porter sees it."""
from porter.target import Target

NOT_VISUALGLM = "not reached by ChatGLM-6B / VisualGLM-6B training or inference"

SAT = Target(
    name="sat",
    distribution="SwissArmyTransformer",
    package="sat",
    versions=">=0.3.6,<0.5",
    description="SwissArmyTransformer: the transformer library VisualGLM-6B and ChatGLM-6B are built on",
    scan_exempt={
        "sat/model/official/eva_clip_model.py::*": "EVA2-CLIP only, and only with USE_XFORMERS set; " + NOT_VISUALGLM,
        "sat/model/position_embedding/rotary_embeddings_original.py::*": "never imported by SAT; " + NOT_VISUALGLM,
        "sat/model/position_embedding/triton_rotary.py::*":
            "FastRotaryEmbedding's triton kernels; their import is guarded by sat.imports.triton",
        "sat/mpu/utils.py::gelu_impl": "BaseTransformer's default GELU under TorchScript, which runs on every device; "
                                       "ChatGLM and the VisualGLM encoders pass their own activation",
        "sat/ops/memory_efficient_attention.py::*": "xformers attention, loaded lazily for MemoryEfficientAttentionMixin "
                                                    "only; " + NOT_VISUALGLM,
        "sat/ops/ops_builder/*": "builds SAT's CUDA extensions (FusedEmaAdam); " + NOT_VISUALGLM,
        "sat/tokenization/__init__.py::get_tokenizer": "CogView image tokenizer branch only; " + NOT_VISUALGLM,
        "sat/tokenization/cogview/*": "CogView image tokenizer; " + NOT_VISUALGLM,
    },
)
