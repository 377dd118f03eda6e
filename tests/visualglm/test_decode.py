"""The decoder's per-token work: the mask and positions it passes each step are the ones SAT computes (the logits
are equal at every step), a chat that joins a running batch gets the answer it gets alone, and the vectorised draw
chooses among the candidates SAT's ``BaseStrategy`` keeps, with the same probabilities."""
import pytest
import torch
from porter_visualglm import evaluate
from porter_visualglm.assets import tokenizer_for, tokenizer_type_of
from porter_visualglm.chat import build_prompt
from porter_visualglm.checkpoint import load_model
from porter_visualglm.generate import Decoder, Request, Sampling, nucleus, pick_rows, tokens
from porter_visualglm.images import load_image
from porter_visualglm.tokenizer import EOS


@pytest.fixture(scope="module")
def taught(taught_checkpoint):
    model, ckpt = load_model(taught_checkpoint)
    tokenizer = tokenizer_for(tokenizer_type_of(ckpt), None)
    allowed = tokenizer.sampleable(model.transformer.word_embeddings.weight.shape[0])
    return model.eval(), tokenizer, ckpt.config.vision.image_size, allowed


def requests_of(taught, queries, new_tokens, image=True, sampling=Sampling.greedy, run_out=False):
    """Requests for ``queries``, each allowed ``new_tokens`` more; ``run_out``: <eop> banned, so each answer runs
    to its length."""
    model, tokenizer, size, _ = taught
    items = evaluate.held_out()
    out = []
    for n, (query, extra) in enumerate(zip(queries, new_tokens)):
        prompt = build_prompt(tokenizer, query, image_length=model.image_length, has_image=image)
        picture = load_image(items[n % len(items)].image, size) if image else None
        s = sampling(max_length=len(prompt.ids) + extra)
        if run_out:
            s.invalid_slices = [slice(EOS, EOS + 1)]
        out.append(Request(prompt, picture, s))
    return out


def logged(decoder):
    """Every step's logits, with the request indices of their rows."""
    seen, real = [], decoder._logits

    def logits():
        out = real()
        seen.append((list(decoder.live), out.clone()))
        return out

    decoder._logits = logits
    return seen


QUERIES = ["图片里有什么？", "What's in the image? Describe the colours and the shape in detail, please.",
           "这是什么形状？请说明颜色。"]


@pytest.mark.parametrize("image", [True, False], ids=["image", "text only"])
def test_the_step_inputs_give_the_logits_sats_own_get_inputs_gives_at_every_step(taught, image):
    """Three prompts of different lengths (so rows are left-padded), ending at different steps (so rows leave and
    the shared padding is cut, down to SAT's one-row path at the end)."""
    model, _, _, allowed = taught
    runs = {}
    for sat_inputs in (True, False):
        decoder = Decoder(model, requests_of(taught, QUERIES, [3, 9, 14], image, run_out=True), allowed, sat_inputs=sat_inputs)
        seen = logged(decoder)
        while not decoder.done:
            decoder.step()
        runs[sat_inputs] = seen
    assert len(runs[True]) == len(runs[False]) >= 10
    assert {len(rows) for rows, _ in runs[False]} >= {1, 3}
    for step, ((rows_sat, sat), (rows_ours, ours)) in enumerate(zip(runs[True], runs[False])):
        assert rows_sat == rows_ours
        assert torch.equal(sat, ours), f"step {step}: the logits differ"


def test_step_inputs_are_the_last_position_of_sats_mask_and_positions(taught):
    model, _, _, allowed = taught
    decoder = Decoder(model, requests_of(taught, QUERIES, [20, 20, 20]), allowed)
    for _ in range(3):
        decoder.step()
    mask, positions = model.get_inputs(decoder.seq)  # SAT's ChatGLMModel computes both from the padded ids
    ours = decoder.step_inputs()
    assert torch.equal(ours["attention_mask"], mask[:, :, -1:, :].to(ours["attention_mask"].dtype))
    assert torch.equal(ours["position_ids"], positions[..., -1:])


def run_with_joins(model, allowed, requests, schedule):
    """Generate ``requests``: the first ones start the batch, and after the step numbers in ``schedule`` the next
    group joins it ({step: number of requests joining}). Returns each request's tokens."""
    start = len(requests) - sum(schedule.values())
    decoder = Decoder(model, requests[:start], allowed)
    got: dict[int, list[int]] = {i: [] for i in range(len(requests))}
    queue, step, sizes = list(requests[start:]), 0, []

    def take(out):
        for i, token in out.items():
            if token is not None:
                got[i].append(token)

    while not decoder.done or queue:
        take(decoder.step() if not decoder.done else {})
        step += 1
        sizes.append(len(decoder.live))
        if step in schedule:
            joining, queue = queue[:schedule[step]], queue[schedule[step]:]
            take(decoder.join(joining))
    return [got[i] for i in range(len(requests))], sizes


def test_chats_that_join_a_running_batch_get_the_answers_they_get_alone(taught):
    """Joiners both shorter and longer than the running rows (either side gets padded), text-only rows joining
    image rows, one joining after everything before it has ended."""
    model, _, _, allowed = taught
    first = requests_of(taught, QUERIES[:2], [24, 8])
    text = requests_of(taught, ["你好，请介绍一下你自己。"], [12], image=False)
    later = requests_of(taught, [QUERIES[1] * 2, QUERIES[2]], [10, 16])
    last = requests_of(taught, [QUERIES[0]], [6])
    requests = first + later[:1] + text + later[1:] + last
    together, sizes = run_with_joins(model, allowed, requests, {3: 1, 5: 1, 6: 1, 60: 1})
    alone = [list(tokens(model, r.prompt, r.image, r.sampling, allowed)) for r in requests]
    assert together == alone
    assert max(sizes) >= 4 and all(len(t) > 2 for t in alone)


def test_a_join_that_fails_leaves_the_running_batch_as_it_was(taught, monkeypatch):
    """The newcomers' prompt ran, then growing the cache failed (out of memory, say): the running rows go on as if
    nothing had been tried."""
    from porter_visualglm import generate

    model, _, _, allowed = taught
    running, joining = requests_of(taught, QUERIES[:2], [16, 8], run_out=True)
    decoder = Decoder(model, [running], allowed)
    got = [decoder.step()[0]]
    real = generate._pad_left

    def out_of_memory(t, width, value, dim):
        if dim == 0:  # the key/value cache, padded to the joined width
            raise RuntimeError("out of memory")
        return real(t, width, value, dim)

    monkeypatch.setattr(generate, "_pad_left", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        decoder.join([joining])
    monkeypatch.setattr(generate, "_pad_left", real)
    assert decoder.live == [0] and len(decoder.requests) == 1 and decoder.seq.shape[0] == 1
    while not decoder.done:
        got += [t for t in decoder.step().values() if t is not None]
    assert got == list(tokens(model, running.prompt, running.image, running.sampling, allowed))


def test_a_seeded_sampled_chat_draws_the_same_tokens_joined_or_alone(taught):
    model, _, _, allowed = taught

    def sampled(max_length):
        return Sampling(max_length=max_length, top_k=20, top_p=0.8, temperature=0.9, seed=7)

    requests = requests_of(taught, QUERIES, [20, 20, 20], sampling=sampled)
    together, _ = run_with_joins(model, allowed, requests, {2: 1, 4: 1})
    alone = [list(tokens(model, r.prompt, r.image, r.sampling, allowed)) for r in requests]
    assert together == alone


def test_compact_renumbers_the_live_rows_and_they_go_on(taught):
    model, _, _, allowed = taught
    requests = requests_of(taught, QUERIES, [2, 12, 12])
    decoder = Decoder(model, requests, allowed)
    got = {1: [], 2: []}
    while 0 in decoder.live:
        for i, t in decoder.step().items():
            if i in got and t is not None:
                got[i].append(t)
    assert decoder.compact() == [1, 2] and decoder.live == [0, 1]
    while not decoder.done:
        for i, t in decoder.step().items():
            if t is not None:
                got[i + 1].append(t)
    assert [got[1], got[2]] == [list(tokens(model, r.prompt, r.image, r.sampling, allowed)) for r in requests[1:]]


# SAT applies top_p only where top_k > 0 (its top-p code sits inside the top-k test); porter applies it whatever
# top_k is, as OpenAI's clients expect of top_p, so top_k = 0 is not compared here.
@pytest.mark.parametrize("top_k,top_p,temperature", [(5, 1.0, 1.0), (40, 0.7, 0.8), (100, 0.4, 0.8), (2000, 0.9, 1.3)])
def test_the_draw_keeps_sats_candidates_with_sats_probabilities(top_k, top_p, temperature):
    from sat.generation.sampling_strategies.base_strategy import top_k_logits

    gen = torch.Generator().manual_seed(top_k)
    logits = torch.randn(2000, generator=gen) * 3
    scaled = logits / temperature
    theirs = torch.softmax(top_k_logits(scaled.clone().unsqueeze(0), top_k=top_k, top_p=top_p)[0], dim=-1)
    s = Sampling(top_k=top_k, top_p=top_p, temperature=temperature)
    values, ids = torch.topk(logits, top_k)  # before the temperature, as pick_rows hands them over
    kept, probs = nucleus(values, ids, s)
    ours = torch.zeros_like(theirs).index_put_((kept,), probs)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert 1 <= len(kept) <= (top_k or 2000)


def test_rows_with_different_sampling_are_drawn_apart_and_a_failing_row_fails_alone():
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(1)) * 3
    rows = [Sampling.greedy(), Sampling(top_k=10, top_p=0.9, seed=1), Sampling(top_k=3, top_p=1.0, seed=2)]
    generators = [None, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    drawn = pick_rows(logits, rows, generators, [[], [], []])
    assert drawn[0] == int(logits[0].argmax())
    assert drawn[1] in torch.topk(logits[1], 10).indices.tolist()
    assert drawn[2] in torch.topk(logits[2], 3).indices.tolist()
    broken = logits.clone()
    broken[1] = float("nan")
    drawn = pick_rows(broken, rows, [None, torch.Generator().manual_seed(1), None], [[], [], []])
    assert isinstance(drawn[1], Exception) and drawn[0] == int(logits[0].argmax())
