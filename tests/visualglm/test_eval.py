"""`porter run visualglm eval`: batched greedy answers equal one-by-one answers exactly; predictions and scores
written; pycocoevalcap's scorers fed the way COCO's evaluation feeds them."""
import json
import subprocess
import sys

import pytest
from porter_visualglm import evaluate
from porter_visualglm.assets import tokenizer_for, tokenizer_type_of
from porter_visualglm.checkpoint import load_model
from porter_visualglm.scoring import Answer, caption_scores, caption_tokens, shape_scores


@pytest.fixture(scope="module")
def taught(taught_checkpoint):
    model, ckpt = load_model(taught_checkpoint)
    return model.eval(), tokenizer_for(tokenizer_type_of(ckpt), None), ckpt.config.vision.image_size


def test_batched_greedy_answers_equal_one_by_one_answers_on_the_shipped_validation_images(taught):
    model, tokenizer, size = taught
    one_by_one = [a.answer for a in evaluate.answer(model, tokenizer, evaluate.held_out(), size, batch_size=1)]
    assert len(set(one_by_one)) > 2  # the answers depend on the image and the language: padding could show
    for batch_size in (5, 36):
        batched = [a.answer for a in evaluate.answer(model, tokenizer, evaluate.held_out(), size,
                                                     batch_size=batch_size)]
        assert batched == one_by_one, f"batch size {batch_size}"


def test_answers_of_different_lengths_leave_the_batch_as_they_end(taught):
    """Short and long prompts in one batch: rows end at different steps, the shared padding is cut."""
    model, tokenizer, size = taught
    items = evaluate.held_out()[:4]
    items[1].prompt = "图片里有什么？请详细描述图片中的颜色、形状和背景。" * 3
    alone = [evaluate.answer(model, tokenizer, [Answer(i.image, i.prompt, [], "")], size, max_new_tokens=40)[0].answer
             for i in items]
    together = evaluate.answer(model, tokenizer, items, size, batch_size=4, max_new_tokens=40)
    assert [a.answer for a in together] == alone


def test_a_padded_answer_left_alone_in_the_batch_still_sees_only_its_own_prompt(taught):
    """The long prompt ends first (2 tokens); the short, left-padded one goes on alone, on SAT's one-row path,
    which attends to every cached position: the padding must be gone from its ids and its cache by then."""
    from porter_visualglm.chat import build_prompt
    from porter_visualglm.generate import Decoder, Request, Sampling, tokens
    from porter_visualglm.images import load_image
    from porter_visualglm.tokenizer import PAD

    model, tokenizer, size = taught
    item = evaluate.held_out()[1]
    image = load_image(item.image, size)
    short = build_prompt(tokenizer, item.prompt, image_length=model.image_length)
    long = build_prompt(tokenizer, item.prompt * 6, image_length=model.image_length)
    requests = [Request(long, image, Sampling.greedy(len(long.ids) + 2)),
                Request(short, image, Sampling.greedy(len(short.ids) + 30))]
    allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
    decoder, got, alone_steps = Decoder(model, requests, allowed), [[], []], 0
    while not decoder.done:
        for row, token in decoder.step().items():
            if token is not None:
                got[row].append(token)
        if decoder.live == [1]:  # a trained model's argmax can survive attending to pads: check they are gone
            alone_steps += 1
            assert decoder.seq[0, 0] != PAD  # (the image positions inside the prompt are pad ids too)
            assert all(kv[0].shape[0] == decoder.seq.shape[1] - 1 for kv in decoder.past)
    assert alone_steps > 2
    alone = [list(tokens(model, r.prompt, r.image, r.sampling, allowed)) for r in requests]
    assert got == alone and len(alone[1]) > 2


def test_the_recipe_writes_predictions_and_scores_two_checkpoints_side_by_side(taught_checkpoint, tmp_path):
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "porter.cli", "run", "visualglm", "eval", "--from_pretrained",
                        str(taught_checkpoint), "--compare", str(taught_checkpoint), "--batch-size", "6",
                        "--limit", "12", "--out", str(out)], capture_output=True, text=True, env={
                            **__import__("os").environ, "PORTER_DEVICE": "cpu"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]) == {"image", "prompt", "answer", "references"}
    again = [json.loads(line) for line in (out / "compare" / "predictions.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in again] == [a["answer"] for a in rows]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["questions"] == 12 and len(scores["checkpoints"]) == 2
    first = next(iter(scores["checkpoints"].values()))
    assert set(first["captions"]) == {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"} and first["shapes"]["answers"] == 12
    table = r.stdout.splitlines()
    assert table[0].count(str(taught_checkpoint)) == 2 and any(line.startswith("CIDEr") for line in table)


@pytest.mark.parametrize("args, words", [([], "--from_pretrained DIR is required"),
                                         (["--from_pretrained", "/nonexistent"], "/nonexistent: no such checkpoint")])
def test_recipe_faults_are_one_line(args, words):
    r = subprocess.run([sys.executable, "-m", "porter.cli", "run", "visualglm", "eval", *args], capture_output=True,
                       text=True)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_captions_are_tokenised_as_cocos_evaluation_does_and_chinese_by_character():
    assert caption_tokens("A red circle, on a WHITE background.") == "a red circle on a white background"
    assert caption_tokens("白色背景上的一个红色圆形。") == "白 色 背 景 上 的 一 个 红 色 圆 形"


def test_caption_scores_rank_a_right_answer_above_a_wrong_one():
    refs = [["a red circle on a white background"], ["a blue square on a black background"],
            ["a green triangle on a gray background"]]
    right = [Answer(str(i), "q", r, r[0]) for i, r in enumerate(refs)]
    wrong = [Answer(str(i), "q", r, "a purple circle") for i, r in enumerate(refs)]
    good, bad = caption_scores(right), caption_scores(wrong)
    assert good["BLEU-4"] == pytest.approx(1.0) and good["ROUGE-L"] == pytest.approx(1.0)
    assert bad["BLEU-4"] < 0.01 and bad["CIDEr"] < good["CIDEr"] and bad["ROUGE-L"] < good["ROUGE-L"]


def test_shape_scores_judge_colour_and_shape_in_either_language():
    answers = [Answer("1", "q", ["a red circle on a white background"], "a red square"),
               Answer("2", "q", ["黑色背景上的一个红色圆形"], "一个红色圆形"),
               Answer("3", "q", ["a cat on a sofa"], "a cat")]  # names neither: not judged
    s = shape_scores(answers)
    assert s["answers"] == 2 and s["colour"] == 1.0 and s["shape"] == 0.5 and s["both"] == 0.5
