"""The ChatGLM-6B tokenizer on sentencepiece: ids, normalisation, round trips."""
import pytest

from porter.errors import PorterError
from porter_visualglm import tokenizer as tok


def test_special_ids_are_chatglm_6b_s(tiny_tokenizer):
    t = tiny_tokenizer
    assert (t.mask_token_id, t.gmask_token_id, t.bos_token_id, t.eos_token_id, t.pad_token_id) == \
        (130000, 130001, 130004, 130005, 3)
    assert t.vocab_size == 130528
    assert t.prompt_ids("hi")[-2:] == [130001, 130004]
    assert all(i >= 20000 for i in t.encode("a red circle"))  # text ids sit above the 20,000 image tokens


@pytest.mark.parametrize("text", [
    "a red circle on a white background",
    "白色背景上的一个红色圆形",
    "Mixed 中文 and English,\nwith\ttabs,  double   triple    spaces\n\nand blank lines.",
    "问：图片里有什么？\n答：一个蓝色的三角形 — 🙂 emoji too",
    "code:\n\tif x:\n\t\treturn  y" + " " * 80 + "end",
])
def test_round_trip(tiny_tokenizer, text):
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


def test_whitespace_becomes_chatglm_pieces():
    assert tok.normalise("a\nb\tc  d   e") == "a<n>b<|tab|>c<|blank_2|>d<|blank_3|>e"
    assert tok.denormalise(tok.normalise("x" + " " * 85 + "y")) == "x" + " " * 85 + "y"


def test_newline_is_one_piece(tiny_tokenizer):
    ids = tiny_tokenizer.encode("a\nb")
    pieces = [tiny_tokenizer.sp.IdToPiece(i - 20000) for i in ids]
    assert "<n>" in pieces


def test_decode_drops_image_tokens_and_writes_specials(tiny_tokenizer):
    ids = tiny_tokenizer.encode("<img>") + [3] * 4 + tiny_tokenizer.encode("</img>") + [130001, 130004]
    # each encode() starts with SentencePiece's dummy prefix, as ChatGLM-6B's does: hence the space
    assert tiny_tokenizer.decode(ids) == "<img> </img>[gMASK]<sop>"


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PorterError, match=r"no ice_text\.model here"):
        tok.ChatGLMTokenizer(tmp_path)
    (tmp_path / "ice_text.model").write_bytes(b"not a model")
    with pytest.raises(PorterError, match="not a sentencepiece model"):
        tok.ChatGLMTokenizer(tmp_path)


def test_a_model_whose_specials_sit_elsewhere_is_refused(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 20)
    spm.SentencePieceTrainer.Train(input=str(corpus), model_prefix=str(tmp_path / "ice_text"), vocab_size=40,
                                   user_defined_symbols=["[gMASK]"], hard_vocab_limit=False, minloglevel=2)
    with pytest.raises(PorterError, match=r"piece \[gMASK\] has id .*ChatGLM-6B uses 130001"):
        tok.ChatGLMTokenizer(tmp_path)


def test_tiny_tokenizer_is_built_deterministically(tmp_path, monkeypatch):
    from porter_visualglm import tiny_tokenizer

    from porter_visualglm.tokenizer import ChatGLMTokenizer

    def pieces(cache):
        monkeypatch.setenv("PORTER_CACHE", str(tmp_path / cache))
        sp = ChatGLMTokenizer(tiny_tokenizer.tiny_tokenizer_dir()).sp
        return [(sp.IdToPiece(i), sp.GetScore(i)) for i in range(sp.GetPieceSize())]

    first = pieces("a")
    assert len(first) > 300 and first == pieces("b")
