"""The README's benchmark table, from benchmarks/results/*.json (what `make bench` writes).

    .venv/bin/python benchmarks/report.py          rewrites the table between the bench markers in README.md

Each row names its command, the number of samples, the median and the spread (min-max), and says so when a goal
the issues set is not met. A result file that is missing gives no row (run its benchmark first).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
README = HERE.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _load(name: str) -> dict | None:
    path = HERE / "results" / name
    return json.loads(path.read_text()) if path.exists() else None


def _spread(s: dict, fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])}, n={len(s['samples'])})"


def rows() -> list[tuple[str, str, str]]:
    out = []
    cost = _load("patch_cost.json")
    if cost:
        ref = cost["import_sat_s"]
        out.append(("`python -c \"import sat\"` (the unit below)", f"{_spread(ref)} s", "bench_patch_cost.py"))
        for name, ratio in cost["ratio_to_import_sat"].items():
            goal = cost["goals"].get(name)
            note = "" if goal is None else (f"; goal <= {goal['ratio_at_most']}: " + ("met" if goal["met"] else "**not met**"))
            command, _, qualifier = name.partition(" (")
            label = f"`porter {command.replace('patch', 'patch sat', 1).replace('verify', 'verify sat').replace('revert', 'revert sat').replace('status', 'status sat')}`"
            label += f" ({qualifier.rstrip(')')} plan cache)" if qualifier else ""
            out.append((f"{label} / `import sat`", f"{_spread(ratio, '{:.3f}')}x, "
                        f"{cost['seconds'][name]['median']:.2f} s{note}", "bench_patch_cost.py"))
    patch = _load("patch.json")
    if patch:
        out.append(("in-process: plan / patch / no-op repatch / revert; in-memory port for a worker cold / cached",
                    f"{patch['plan_s']:.2f} / {patch['patch_s']:.2f} / {patch['repatch_noop_s']:.3f} / "
                    f"{patch['revert_s']:.3f} s; {patch['memory_plan_cold_s']:.2f} / {patch['memory_plan_cached_s']:.3f} s "
                    "(one sample each)", "bench_patch.py"))
    engine = _load("plan_engine.json")
    if engine:
        for key in ("sat", "large"):
            part = engine.get(key)
            if not part:
                continue
            s, r = part["seconds"], part["ratio_to_porter"]
            ways = ["porter", "whole files, shared walks", "reference, one rule at a time", "before #25"]
            shown = [w for w in ways if w in s]
            out.append((f"plan {part['target']} in-process ({part['rules']} rules, {part['files_planned']} files): "
                        + " / ".join(shown) + " (identical plans)",
                        " / ".join(f"{_spread(s[w])} s" for w in shown) + "; "
                        + ", ".join(f"{w} / porter {r[w]:.2f}" for w in shown[1:]),
                        "bench_plan_engine.py"))
    runtime = _load("runtime_overhead.json")
    if runtime:
        for size, r in runtime["sizes"].items():
            note = "" if r["goal_met"] else f"; goal <= {runtime['goal_ratio_at_most']}: **not met**"
            out.append((f"ChatGLM forward+backward, {size}: patched / original SAT (CPU)",
                        f"{_spread(r['ratio_patched_to_original'], '{:.3f}')}x"
                        f"{', same losses' if r['losses_identical'] else ', **losses differ**'}{note}",
                        "bench_runtime_overhead.py"))
    parity = _load("loss_parity.json")
    if parity:
        d = parity["relative_difference"]
        note = "" if parity["goal_met"] else f"; goal max <= {parity['goal_max_at_most']:.0e}: **not met**"
        out.append((f"loss curve, {parity['steps']} tiny VisualGLM fine-tuning steps: patched vs original SAT",
                    f"relative difference mean {d['mean']:.1e}, max {d['max']:.1e} (seed {parity['seed']}){note}",
                    "bench_loss_parity.py"))
    mem = _load("memory_import.json")
    if mem:
        note = "" if mem["goal_met"] else f"; goal <= {mem['goal_ratio_at_most']}: **not met**"
        out.append(("`import sat` with the port in memory / patched on disk (whole processes)",
                    f"{_spread(mem['ratio_memory_to_disk'], '{:.3f}')}x; {mem['seconds']['in memory']['median']:.2f} s "
                    f"vs {mem['seconds']['on disk']['median']:.2f} s{note}", "bench_memory_import.py"))
    adamw = _load("cpu_adamw.json")
    if adamw:
        parts = [f"{layout}: {ratio:.2f}x ({_spread(adamw['seconds'][layout + ', fused'], '{:.4f}')} s vs "
                 f"{_spread(adamw['seconds'][layout + ', for-loop'], '{:.4f}')} s)"
                 for layout, ratio in adamw["fused_over_loop"].items()]
        out.append((f"CPU AdamW step over the tiny VisualGLM's {adamw['parameters'] / 1e6:.0f} M trainable parameters: "
                    f"torch's fused kernel / the for-loop", "; ".join(parts), "bench_cpu_adamw.py"))
    accelerator = _load("accelerator.json")
    if accelerator:
        label = ("`porter.runtime.ops` / SAT's default path on an accelerator (attention, GELU, rotary; bf16, "
                 "ChatGLM-6B layer shapes)")
        if "skipped" in accelerator:
            out.append((label, f"not measured: {accelerator['skipped']}", "bench_accelerator.py"))
        else:
            parts = [f"{name}: {r['ratio']:.2f}x ({r['porter_ms']:.3f} vs {r['sat_ms']:.3f} ms, max diff "
                     f"{r['max_abs_diff']:.1e})" for name, r in accelerator["ops"].items()]
            out.append((f"{label}, {accelerator['device']}", "; ".join(parts) + " (median of 20, alternating)",
                        "bench_accelerator.py"))
    scaling = _load("scaling.json")
    if scaling and "efficiency_2" in scaling:
        one, two = scaling["samples_per_s"]["1"], scaling["samples_per_s"]["2"]
        eff = scaling["efficiency_2"]
        out.append(("`porter run visualglm train --mode performance`, samples/s with 1 / 2 CPU processes, each pinned "
                    "to its own core with 1 thread (`--bind-cores`)",
                    f"{_spread(one)} / {_spread(two)}; data-parallel efficiency {eff:.2f}; goal >= 0.85: "
                    + ("met" if eff >= 0.85 else "**not met**") + " (alternating)", "bench_scaling.py"))
    overhead = _load("train_overhead.json")
    if overhead:
        out.append(("training step, `porter run visualglm train` (1 process, SAT + DeepSpeed, ZeRO stage: "
                    f"{overhead['zero_stage']}) / a plain PyTorch loop, same model, data, optimizer, 1 core",
                    f"{overhead['ratio']:.2f}x ({_spread(overhead['framework_step_s'], '{:.3f}')} s vs "
                    f"{_spread(overhead['plain_step_s'], '{:.3f}')} s); goal <= {overhead['target']}: "
                    + ("met" if overhead["met"] else "**not met**") + " (alternating)", "bench_train_overhead.py"))
    syscpu = _load("train_syscpu.json")
    if syscpu:
        cells = []
        for n in ("1", "2"):
            base, ours = syscpu["summary"][f"{n}/glibc_defaults"], syscpu["summary"][f"{n}/porter_malloc"]
            cells.append(f"{n} process(es): {base['step_s']['median']:.3f} -> {ours['step_s']['median']:.3f} s/step, "
                         f"system {base['system_s']['median']:.1f} -> {ours['system_s']['median']:.1f} s, minor faults "
                         f"{base['minor_faults']['median'] / 1e6:.2f} M -> {ours['minor_faults']['median'] / 1e6:.2f} M")
        out.append(("training, glibc malloc defaults -> porter's CPU-worker malloc settings (20 tiny steps, pinned)",
                    "; ".join(cells) + f" ({syscpu['rounds']} round(s), alternating)", "bench_train_syscpu.py"))
    step = _load("train_step.json")
    if step:
        out.append(("tiny VisualGLM training step, logits only where labels are vs all positions",
                    f"{step['speedup']:.1f}x faster ({step['selective_logits_s']:.2f} s vs {step['full_logits_s']:.2f} s, "
                    f"batch {step['batch']}; median of 5 each, alternating)", "bench_train_step.py"))
    memory = _load("load_memory.json")
    if memory:
        out.append((f"peak host memory loading a {memory['file_bytes'] / 2**30:.2f} GiB fp16 checkpoint, above baseline, "
                    "per file byte: porter / usual",
                    f"{memory['porter_over_baseline_per_file_byte']:.2f} / {memory['usual_over_baseline_per_file_byte']:.2f} "
                    f"(n={memory['runs']}, alternating)", "bench_load_memory.py"))
    convert = _load("convert_memory.json")
    if convert:
        sizes = convert["standin"]
        labels = {"hf_to_sat": "HF -> SAT", "sat_to_hf": "SAT -> HF", "hf_to_sat_bf16": "HF -> SAT --dtype bf16",
                  "sat_to_mp2": "SAT -> SAT --mp 2"}
        cells = [f"{labels.get(name, name)}: {d['peak_above_baseline_bytes']['median'] / 2**20:.0f} MiB "
                 f"({d['peak_per_largest_hf_shard']['max']:.2f}x the largest shard), {d['wall_s']['median']:.1f} s"
                 for name, d in convert["directions"].items()]
        out.append((f"`porter run visualglm convert`, a {sizes['weights_bytes'] / 1e9:.2f} GB fp16 checkpoint in "
                    f"{len(sizes['hf_shard_bytes'])} shards: peak host memory (RssAnon) above the post-import baseline",
                    "; ".join(cells) + f"; goal <= 2x the largest shard: {'met' if convert['goal_met'] else '**not met**'} "
                    f"(n={convert['runs']}, alternating)", "bench_convert_memory.py"))
    accuracy = _load("quant_accuracy.json")
    if accuracy:
        demo, heavy = accuracy["demo"], accuracy["heavy_tailed"]
        for way in ("bf16 int8", "bf16 int4"):
            d, h = demo["ways"][way], heavy["ways"][way]
            out.append((f"`--quant {way[-1]}` ({way[:4]}) against fp32: the demo model's {demo['questions']} held-out "
                        "answers; last-position logits cosine (demo; heavy-tailed 1024-wide model)",
                        f"{d['answers_equal']}/{demo['questions']} equal; cosine min {d['logits_cosine_min']:.4f}; "
                        f"{h['logits_cosine_min']:.4f}" + ("; goals >= 34/36, >= 0.999: " + (
                            "met" if d["answers_equal"] >= 34 and min(d["logits_cosine_min"], h["logits_cosine_min"])
                            >= 0.999 else "**not met**") if way == "bf16 int8" else "") + " (one run)",
                        "bench_quant_accuracy.py"))
    for decode in filter(None, (_load("decode.json"), _load("decode_fp32.json"))):
        ran = not decode.get("upstream_skipped")
        for name, m in decode["models"].items():
            child = m["child"]
            cells = []
            for mode, r in m["summary"].items():
                if "upstream" in r:
                    cells.append(f"{mode}: porter {r['porter']['tokens_per_s_median']:.2f} / upstream "
                                 f"{r['upstream']['tokens_per_s_median']:.2f} tokens/s, "
                                 f"{r['ratio_median_of_rounds']:.2f}x (prompt and image: "
                                 f"{r['porter']['prefill_s_median']:.2f} vs {r['upstream']['prefill_s_median']:.2f} s)")
                else:
                    cells.append(f"{mode}: porter {r['porter']['tokens_per_s_median']:.2f} tokens/s")
            share = m.get("bandwidth_share")
            if share is not None and name == "mid":  # the small one is mostly an output layer: not a fair share
                cells.append(f"weights read at {share:.0%} of the measured bandwidth; goal >= 50%: "
                             + ("met" if share >= 0.5 else "**not met**"))
            if ran:
                cells.append("goal >= 1.5x upstream: " + ("met" if all(
                    r.get("ratio_median_of_rounds", 0) >= 1.5 for r in m["summary"].values()) else "**not met**"))
            what = (f"decode at batch 1, {name} stand-in ({child['parameters'] / 1e9:.2f} B parameters, "
                    f"{decode['dtype']}), {decode['tokens']} tokens")
            what += ": porter's Decoder against upstream VisualGLM-6B's chat()" if ran else \
                " (upstream's chat() runs in fp16 only)" if decode["dtype"] != "float16" else \
                f" (upstream not run: {decode['upstream_skipped']})"
            out.append((what, "; ".join(cells) + (" (ABBA rounds)" if ran else ""), "bench_decode.py"))
    step_cost = _load("decode_step.json")
    if step_cost and step_cost.get("against"):
        rev, ratio = step_cost["against"], step_cost["ratio_this_over_against"]
        this, other = step_cost["step_s"]["this"], step_cost["step_s"][rev]
        cells = "; ".join(f"{k.replace('/', ', batch ')}: {this[k]['median'] * 1e3:.1f} vs {other[k]['median'] * 1e3:.1f} ms "
                          f"({ratio[k]:.2f}x)" for k in ratio)
        out.append((f"decode step, tiny preset, one image prompt: this version / {rev}", cells
                    + f" ({step_cost['rounds']} rounds, alternating)", "bench_decode_step.py"))
    load = _load("serve_load.json")
    if load and "closed_loop" in load:
        closed = load["closed_loop"]
        clients = list(closed["continuous"])
        cells = "; ".join(
            f"{n}: {closed['continuous'][n]['tokens_per_s']:.0f} ({closed['static'][n]['tokens_per_s']:.0f}) tokens/s, "
            f"p95 {closed['continuous'][n]['latency_s']['p95']:.2f} ({closed['static'][n]['latency_s']['p95']:.2f}) s"
            for n in clients if n in closed["static"])
        acc = load.get("acceptance")
        goal = "" if not acc else (
            f"; 8 clients / 1: {acc['tokens_per_s_8_over_1']:.2f}x tokens/s, {acc['p95_latency_8_over_1']:.2f}x p95 "
            "latency; goals >= 3x, <= 1.5x: " + ("met" if acc["tokens_per_s_8_over_1"] >= 3
                                                  and acc["p95_latency_8_over_1"] <= 1.5 else "**not met**"))
        out.append((f"`serve`, N clients x {load['requests_per_client']} chats in a row, {load['max_tokens']} tokens "
                    f"each, streamed, {load['model']}, --max-batch {load['max_batch']}: continuous (static) batching",
                    cells + goal + " (one run, alternating)", "bench_serve_load.py"))
        opened = load["open_loop"]
        if "continuous" in opened:
            cells = "; ".join(
                f"{mode}: {r['tokens_per_s']:.0f} tokens/s, latency p50 {r['latency_s']['p50']:.2f} / p95 "
                f"{r['latency_s']['p95']:.2f} s, first token p50 {r['first_token_s']['p50'] * 1e3:.0f} / p95 "
                f"{r['first_token_s']['p95'] * 1e3:.0f} ms, inter-token p95 {r['inter_token_s']['p95'] * 1e3:.1f} ms "
                f"({r['inter_token_while_a_chat_joins_s']['p95'] * 1e3:.1f} ms while a chat joins)"
                for mode, r in ((m, opened[m]) for m in ("continuous", "static") if m in opened))
            out.append((f"`serve`, Poisson arrivals, {opened['rate_per_s']:g} chats/s for {opened['duration_s']:g} s "
                        f"({opened['chats']} chats), max_tokens drawn from {opened['lengths']}", cells + " (one run)",
                        "bench_serve_load.py"))
    any_code = _load("plan_any.json")
    if any_code:
        for r in any_code["results"]:
            if "error" in r:
                out.append((f"`porter patch {r['distribution']}` (rules for any code)", f"**failed**: {r['error']}",
                            "bench_plan_any.py"))
                continue
            goal = r["cpu_s_per_1000_files"] < 60 and (r["distribution"] != "transformers" or r["plan_wall_s"] < 120)
            v = r["verify"]
            out.append((f"`porter patch {r['distribution']} --dry-run` (rules for any code, plan cache off), "
                        f"{r['distribution']} {r['version']} on a throwaway copy",
                        f"{r['plan_wall_s']:.1f} s wall, {r['plan_cpu_s']:.1f} s CPU ({r['cpu_s_per_1000_files']:.1f} "
                        f"s per 1000 files): {r['files_read']} files read, {r['files_parsed']} parsed, "
                        f"{r['files_changed']} changed; goal < 60 s CPU per 1000 files"
                        + (", transformers < 120 s" if r["distribution"] == "transformers" else "")
                        + (": met" if goal else ": **not met**") + f"; verify: {v['imported_before_and_after']} changed "
                        f"modules import before and after, {len(v['broke'])} broke, "
                        f"{v['did_not_import_before_either']} did not import before either; revert byte for byte: "
                        + ("yes" if r["byte_identical_after_revert"] else "**no**") + " (one run)",
                        "bench_plan_any.py"))
    return out


QUANT_START, QUANT_END = "<!-- quant:start -->", "<!-- quant:end -->"


def quant_table() -> str | None:
    """The README's --quant table: one row per bit width, from results/quant_6b.json (bench_quant_6b.py)."""
    q = _load("quant_6b.json")
    if not q:
        return None
    best = max(b["bytes_per_s"] for b in q["bandwidth"])
    lines = [QUANT_START, "| `--quant` | peak host memory (RssAnon) | held: quantized + 16-bit | load, cold / warm cache "
             "| first token (image + prompt) | decode, batch 1 | share of bandwidth |", "|---|---|---|---|---|---|---|"]
    for bits, run in q["runs"].items():
        cold, warm = run["cold"], run["warm"]
        rate = max(r["decode_tokens_per_s"] or 0 for r in (cold, warm))
        goal = {"8": (14e9, 0.5), "4": (10e9, None)}.get(bits, (None, None))
        met = goal[0] is not None and cold["peak_anon_bytes"] <= goal[0]
        memory_ok = "" if goal[0] is None else f" (goal <= {goal[0] / 1e9:.0f} GB: {'met' if met else '**not met**'})"
        share_ok = "" if goal[1] is None else (" (goal >= 50%: " + ("met" if run["bandwidth_share"] >= goal[1]
                                                                     else "**not met**") + ")")
        lines.append(f"| {bits} | {cold['peak_anon_bytes'] / 1e9:.1f} GB{memory_ok} | "
                     f"{cold['held_bytes']['quantized'] / 1e9:.1f} + {cold['held_bytes']['16-bit'] / 1e9:.1f} GB | "
                     f"{cold['load_s']:.0f} / {warm['load_s']:.0f} s | {cold['first_token_s']:.1f} s | "
                     f"{rate:.2f} tokens/s ({cold['bytes_per_token'] / 1e9:.2f} GB read per token) | "
                     f"{run['bandwidth_share']:.0%} of {best / 1e9:.1f} GB/s{share_ok} |")
    return "\n".join(lines + [QUANT_END])


def _fill(text: str, start: str, end: str, block: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail


def table() -> str:
    lines = [START, "| what | result: median (min-max, samples) | `benchmarks/` |", "|---|---|---|"]
    lines += [f"| {what} | {result} | `{source}` |" for what, result, source in rows()]
    return "\n".join(lines + [END])


def main() -> int:
    text = README.read_text()
    if START not in text or END not in text:
        print(f"{README}: no {START} ... {END} block to fill", file=sys.stderr)
        return 1
    text = _fill(text, START, END, table())
    quant = quant_table()
    if quant and QUANT_START in text and QUANT_END in text:
        text = _fill(text, QUANT_START, QUANT_END, quant)
    README.write_text(text)
    print(f"wrote the benchmark table in {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
