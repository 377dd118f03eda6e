"""The ChatGLM-6B tokenizer on sentencepiece, against a stand-in of the real ice_text.model (its id layout and
its published encodes) and a step-by-step restatement of tokenization_chatglm.py's rules."""
import pytest
from porter_visualglm import standin_tokenizer as standin
from porter_visualglm import tokenizer as tok

from porter.errors import PorterError


def test_the_stand_in_has_the_real_files_layout(standin_tokenizer):
    sp = standin_tokenizer.sp
    assert sp.GetPieceSize() == 130344 and standin_tokenizer.vocab_size == 130528
    specials = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
    assert [sp.IdToPiece(i) for i in range(130000, 130008)] == specials
    assert sp.IdToPiece(130008) == "<|tab|>" and sp.IdToPiece(130009) == "<|blank_2|>"
    assert sp.IdToPiece(130087) == "<|blank_80|>" and sp.IdToPiece(130088) == "<0x00>"
    assert sp.IdToPiece(130343) == "<0xFF>" and sp.IdToPiece(3) == "<pad>"


def test_published_encodes_are_reproduced(standin_tokenizer):
    t = standin_tokenizer
    assert t.prompt_ids("你好") == [5, 74874, 130001, 130004]
    assert t.prompt_ids("74815") == [5, 25, 16, 23, 9, 15, 130001, 130004]
    assert t.encode("Hello") == [19316]
    assert (t.mask_token_id, t.gmask_token_id, t.bos_token_id, t.eos_token_id, t.pad_token_id) == \
        (130000, 130001, 130004, 130005, 3)


def reference_encode(sp, text):
    """tokenization_chatglm.py's SPTokenizer.encode, step by step: tab, blanks from 80 down to 2, newline."""
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for n in range(80, 1, -1):
        text = text.replace(" " * n, f"<|blank_{n}|>")
    return list(sp.EncodeAsIds(text))


def reference_decode(sp, ids):
    """ChatGLMTokenizer._decode: pad dropped, pieces decoded together, replacements undone, then transformers'
    clean_up_tokenization."""
    text = sp.DecodePieces([sp.IdToPiece(i) for i in ids if i != 3])
    text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
    for n in range(2, 81):
        text = text.replace(f"<|blank_{n}|>", " " * n)
    for a, b in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]:
        text = text.replace(a, b)
    return text


TEXTS = [
    "a red circle on a white background",
    "白色背景上的一个红色圆形",
    "Mixed 中文 and English,\nwith\ttabs,  double   triple    spaces\n\nand blank lines.",
    "问：图片里有什么？\n答：一个蓝色的三角形 — 🙂 emoji too 👩‍👩‍👧",
    "code:\n\tif x:\n\t\treturn  y" + " " * 81 + "end" + " " * 170 + "!",
    "Hello , world . Isn 't it ? I 'm sure ! We 've been , they 're here .",
    "written [gMASK] and <sop> specials, <n> and <|blank_3|> as text",
    " leading and trailing spaces ",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_follow_the_reference_rules_exactly(standin_tokenizer, text):
    sp = standin_tokenizer.sp
    ids = standin_tokenizer.encode(text)
    assert ids == reference_encode(sp, text)
    assert standin_tokenizer.decode(ids) == reference_decode(sp, ids)
    with_specials = [3, 3] + ids + [130001, 130004] + ids + [130005, 3]
    assert standin_tokenizer.decode(with_specials) == reference_decode(sp, with_specials)


@pytest.mark.parametrize("text", [TEXTS[i] for i in (0, 1, 2, 3)])  # no " .", no leading space, no "<n>" typed
def test_text_without_clean_up_cases_round_trips(standin_tokenizer, text):
    assert standin_tokenizer.decode(standin_tokenizer.encode(text)) == text


def test_decode_keeps_every_id_but_pad(standin_tokenizer):
    t = standin_tokenizer
    assert t.decode([19316]) == "Hello" and t.decode([5, 74874]) == "你好"  # ids below 20,000 are text too
    assert t.decode([3, 19316, 3]) == "Hello"
    # a ▁ after a special or <n> is a space: the pieces are decoded in one call
    assert t.decode(t.encode("a") + [130001] + t.encode("b")) == "a[gMASK] b"
    assert t.decode(t.encode("<img>") + [3] * 4 + t.encode("</img>") + [130001, 130004]) == "<img> </img>[gMASK]<sop>"


def test_newline_tab_and_blanks_are_single_pieces(standin_tokenizer):
    pieces = [standin_tokenizer.sp.IdToPiece(i) for i in standin_tokenizer.encode("a\nb\tc   d")]
    assert "<n>" in pieces and "<|tab|>" in pieces and "<|blank_3|>" in pieces
    assert tok.normalise("x" + " " * 85 + "y") == "x<|blank_80|><|blank_5|>y"


def test_missing_folder_and_not_a_model_are_clear_errors(tmp_path):
    with pytest.raises(PorterError, match=r"no ice_text\.model here") as caught:
        tok.ChatGLMTokenizer(tmp_path)
    assert caught.value.exit_code == 7
    (tmp_path / "ice_text.model").write_bytes(b"not a model")
    with pytest.raises(PorterError, match="not a sentencepiece model"):
        tok.ChatGLMTokenizer(tmp_path)


def train_small_model(folder, symbols):
    import sentencepiece as spm

    corpus = folder / "c.txt"
    corpus.write_text("hello world\n" * 20)
    spm.SentencePieceTrainer.Train(input=str(corpus), model_prefix=str(folder / "ice_text"), vocab_size=40,
                                   user_defined_symbols=symbols, hard_vocab_limit=False, minloglevel=2)


def test_the_first_releases_layout_is_refused_with_what_to_download(tmp_path):
    train_small_model(tmp_path, [])  # no specials in the file: the pre-"slim" ice_text.model
    with pytest.raises(PorterError, match=r"no \[gMASK\] piece: this is the first ChatGLM-6B release's ice_text\.model"):
        tok.ChatGLMTokenizer(tmp_path)


def test_a_model_whose_specials_sit_elsewhere_is_refused(tmp_path):
    train_small_model(tmp_path, ["[gMASK]"])
    with pytest.raises(PorterError, match=r"piece \[MASK\] has id 0, ChatGLM-6B uses 130000"):
        tok.ChatGLMTokenizer(tmp_path)


def test_the_stand_in_is_built_deterministically(tmp_path, monkeypatch):
    standin.build(tmp_path / "a.model")
    standin.build(tmp_path / "b.model")
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    monkeypatch.setenv("PORTER_CACHE", str(tmp_path / "cache"))
    folder = standin.standin_tokenizer_dir()
    assert (folder / "ice_text.model").read_bytes() == (tmp_path / "a.model").read_bytes()
    assert not [p for p in folder.iterdir() if p.name != "ice_text.model"]  # no temp file left
