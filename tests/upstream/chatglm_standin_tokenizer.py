"""The tokenizer module of the stand-in ``THUDM/chatglm-6b`` hub snapshot (copied there as ``tokenization_chatglm.py``,
which ``tokenizer_config.json``'s ``auto_map`` names): transformers' slow-tokenizer API around porter's own
ChatGLM-6B tokenizer, so that upstream's ``AutoTokenizer.from_pretrained("THUDM/chatglm-6b",
trust_remote_code=True)`` loads without a download.

Only what upstream VisualGLM-6B's ``model/chat.py`` calls is its own code here: ``encode(text,
add_special_tokens=False)`` (through ``_tokenize``), ``__call__`` on a batch, ``build_inputs_with_special_tokens``,
``decode`` and the ``pad``/``bos``/``eos`` ids. The ids and rules are ``porter_visualglm.tokenizer``'s (ChatGLM-6B's
current tokenizer: sentencepiece ids, ``[gMASK]`` 130001, ``<sop>`` 130004, ``<eop>`` 130005, pad 3), read from the
``ice_text.model`` in the snapshot (the stand-in ``porter_visualglm.standin_tokenizer`` writes).
"""
from __future__ import annotations

from pathlib import Path

from porter_visualglm.tokenizer import ChatGLMTokenizer as PorterChatGLMTokenizer
from transformers import PreTrainedTokenizer


class ChatGLMTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "ice_text.model"}
    model_input_names = ["input_ids", "attention_mask", "position_ids"]

    def __init__(self, vocab_file, bos_token="<sop>", eos_token="<eop>", mask_token="[MASK]", pad_token="<pad>",
                 unk_token="<unk>", padding_side="left", **kwargs):
        self.glm = PorterChatGLMTokenizer(Path(vocab_file).parent)
        self.vocab_file = vocab_file
        super().__init__(bos_token=bos_token, eos_token=eos_token, mask_token=mask_token, pad_token=pad_token,
                         unk_token=unk_token, padding_side=padding_side, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.glm.pieces

    def get_vocab(self) -> dict[str, int]:
        return {self.glm.sp.IdToPiece(i): i for i in range(self.glm.pieces)}

    def _tokenize(self, text, **kwargs):
        return [self.glm.sp.IdToPiece(i) for i in self.glm.encode(text)]

    def _convert_token_to_id(self, token):
        return self.glm.sp.PieceToId(token)

    def _convert_id_to_token(self, index):
        return self.glm.sp.IdToPiece(index)

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        return self.glm.decode(ids)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        return self.glm.build_inputs(list(token_ids_0), None if token_ids_1 is None else list(token_ids_1))

    def save_vocabulary(self, save_directory, filename_prefix=None):
        return (self.vocab_file,)
