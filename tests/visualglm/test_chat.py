"""The chat as upstream's model/chat.py and cli_demo.py define it: prompts, English mode, sampling against SAT's
own BaseStrategy, post-processing, streaming."""
import pytest
import torch
from porter_visualglm import chat
from porter_visualglm.generate import Sampling, pick, stream, tokens
from porter_visualglm.model import build_model
from porter_visualglm.tokenizer import ENGLISH_BAN

HISTORY = [("What's in the image?", "A red circle."), ("Where?", "In the middle.")]


def test_prompts_follow_upstreams_templates(standin_tokenizer):
    t = standin_tokenizer
    en = chat.build_prompt(t, "And the colour?", HISTORY, image_length=4, english=True)
    text = "</img>Q:What's in the image?\nA:A red circle.\nQ:Where?\nA:In the middle.\nQ:And the colour?\nA:"
    assert en.ids == t.encode("<img>") + [3] * 4 + t.encode(text) + [130001, 130004]
    assert en.pre_image == len(t.encode("<img>")) and en.has_image
    zh = chat.build_prompt(t, "颜色呢？", [("图片里有什么？", "一个红色圆形。")], image_length=4)
    assert zh.ids == t.encode("<img>") + [3] * 4 + t.encode("</img>问：图片里有什么？\n答：一个红色圆形。\n问：颜色呢？\n答：") + \
        [130001, 130004]
    text_only = chat.build_prompt(t, "你好", image_length=4, has_image=False)
    assert text_only.ids == t.encode("问：你好\n答：") + [130001, 130004] and text_only.pre_image == 0


@pytest.mark.parametrize("raw,processed", [
    ("  你好,世界!  ", "你好，世界！"),
    ("图片中有:一个红色圆形;还有?", "图片中有：一个红色圆形；还有？"),
    ("Hello, world! Yes: no; why?", "Hello, world! Yes: no; why?"),
    ("训练于[[训练时间]]", "训练于2023年"),
])
def test_responses_are_post_processed_as_upstream(raw, processed):
    assert chat.process_response(raw) == processed


def test_history_is_trimmed_oldest_first_only_when_it_does_not_fit(standin_tokenizer):
    kept = chat.trim_history(standin_tokenizer, "And?", HISTORY, image_length=4, max_length=200)
    assert kept == HISTORY
    trimmed = chat.trim_history(standin_tokenizer, "And?", HISTORY, image_length=4, max_length=40)
    assert trimmed == HISTORY[len(HISTORY) - len(trimmed):] and len(trimmed) < len(HISTORY)


@pytest.fixture
def one_process(monkeypatch):
    """BaseStrategy asks the model-parallel group's size; one process without torch.distributed has size 1."""
    from sat.generation.sampling_strategies import base_strategy

    monkeypatch.setattr(base_strategy, "get_model_parallel_world_size", lambda: 1)


def sat_pick(logits, generated, context, **kw):
    """One draw of SAT's own BaseStrategy (what upstream's chat samples with) over the same logits."""
    from sat.generation.sampling_strategies import BaseStrategy

    strategy = BaseStrategy(**kw)
    strategy.context_length = context  # as after the first step: the penalty covers generated ids only
    seq = torch.tensor([[7] * context + list(generated)])
    out, _ = strategy.forward(logits.clone().unsqueeze(0), seq, None)
    return int(out[0, -1])


@pytest.mark.parametrize("seed", range(6))
def test_penalty_temperature_and_bans_pick_what_sats_basestrategy_picks(seed, one_process):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(500, generator=gen) * 3
    top = torch.topk(logits, 4).indices.tolist()
    generated = top[:2] + [int(torch.randint(500, (1,), generator=gen))]
    banned = [slice(top[2], top[2] + 1)]
    for penalty, temperature in [(1.0, 1.0), (1.2, 0.8), (3.0, 0.5)]:
        ours = pick(logits, Sampling(top_k=1, top_p=1.0, temperature=temperature, repetition_penalty=penalty,
                                     invalid_slices=banned), None, generated)
        theirs = sat_pick(logits, generated, 10, top_k=1, temperature=temperature, repetition_penalty=penalty,
                          invalid_slices=banned)
        assert ours == theirs


def test_the_penalty_can_change_the_choice():
    logits = torch.tensor([0.0, 3.0, 2.8, 1.0])
    assert pick(logits, Sampling.greedy(), None, [1]) == 1
    assert pick(logits, Sampling(top_k=1, top_p=1.0, temperature=1.0, repetition_penalty=1.2), None, [1]) == 2


@pytest.fixture(scope="module")
def chinese_loving_model(tiny_config):
    """The tiny model with its output layer pushed toward Chinese pieces: without the ban it says Chinese."""
    model = build_model(tiny_config, seed=5).eval()
    with torch.no_grad():
        head = model.get_mixin("chatglm-final").lm_head.weight
        head[ENGLISH_BAN] += 0.5 * head[ENGLISH_BAN].sign() * model.transformer.final_layernorm.weight.sign()
    return model


def test_english_mode_never_samples_a_banned_id(chinese_loving_model, standin_tokenizer, tiny_config):
    model, t = chinese_loving_model, standin_tokenizer
    image = torch.zeros(3, tiny_config.vision.image_size, tiny_config.vision.image_size)
    prompt = chat.build_prompt(t, "Describe the image.", image_length=model.image_length, english=True)
    sampled, sampled_free = [], []
    for seed in range(3):
        kw = {"max_length": len(prompt.ids) + 12, "top_k": 100, "top_p": 0.9, "temperature": 1.0, "seed": seed}
        allowed = t.sampleable(tiny_config.lm.vocab)
        sampled += list(tokens(model, prompt, image, Sampling(invalid_slices=[ENGLISH_BAN], **kw), allowed))
        sampled_free += list(tokens(model, prompt, image, Sampling(**kw), allowed))
    assert sampled and not [i for i in sampled if ENGLISH_BAN.start <= i < ENGLISH_BAN.stop]
    assert [i for i in sampled_free if ENGLISH_BAN.start <= i < ENGLISH_BAN.stop]  # so the ban did the work


def test_streamed_pieces_join_to_the_post_processed_answer(standin_tokenizer, tiny_config):
    model = build_model(tiny_config, seed=2).eval()
    image = torch.zeros(3, tiny_config.vision.image_size, tiny_config.vision.image_size)
    prompt = chat.build_prompt(standin_tokenizer, "图片里有什么？", image_length=model.image_length)
    for seed in range(3):
        sampling = Sampling(max_length=len(prompt.ids) + 30, top_k=50, temperature=1.5, seed=seed)
        ids = list(tokens(model, prompt, image, sampling, standin_tokenizer.sampleable(tiny_config.lm.vocab)))
        pieces = list(stream(model, standin_tokenizer, prompt, image, sampling))
        assert "".join(pieces) == chat.process_response(standin_tokenizer.decode(ids))


def test_stable_prefix_holds_back_what_may_still_change():
    assert chat.stable_prefix("图片,") == "图片"
    assert chat.stable_prefix("a red circle  ") == "a red circle"
    assert chat.stable_prefix("训练于[[训练") == "训练于"
    assert chat.stable_prefix("done.") == "done."


class _Letters:
    """A tokenizer whose ids are characters: AnswerText's logic without sentencepiece's spacing rules."""

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize("text, stop, answer, stopped", [
    ("a red circle. a blue square", ("."), "a red circle", True),
    ("a red circle on white", ("on w", "xyz"), "a red circle ", True),
    ("a red circle on white", ("on wx",), "a red circle on white", False),  # a prefix held back, then released
    ("no stop here", (), "no stop here", False),
])
def test_stop_strings_end_the_answer_and_the_pieces_join_to_it(text, stop, answer, stopped):
    from porter_visualglm.generate import AnswerText

    at = AnswerText(_Letters(), stop if isinstance(stop, tuple) else (stop,))
    pieces = []
    for ch in text:
        pieces.append(at.add(ord(ch)))
        if at.stopped:
            break
        for s in at.stop:  # nothing said may later turn out to be the start of a stop string
            assert not any(at.said.endswith(s[:n]) for n in range(1, len(s)))
    pieces.append(at.finish())
    assert "".join(pieces) == answer and at.stopped == stopped
