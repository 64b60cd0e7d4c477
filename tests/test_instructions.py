"""Instruction wordings (split by wording), what the prior knows, and the out-of-distribution flag."""

import warnings

import pytest
import torch

from igpg_hf import (
    IGPGConditions,
    IGPGPipeline,
    IGPGPriorConfig,
    IGPGPriorModel,
    IGPGVQVAEConfig,
    IGPGVQVAEModel,
    WeightLayout,
)
from igpg_hf.conditioning import encode_text, load_text_encoder
from igpg_hf.conditioning.coverage import (
    KnownTask,
    OutOfDistributionWarning,
    calibrate_threshold,
    record_known_conditions,
)
from igpg_hf.zoo import get_architecture, get_task, list_tasks
from igpg_hf.zoo.instructions import (
    SPLITS,
    grammar_pieces,
    heldout_instructions,
    task_wordings,
    training_instructions,
    unrelated_instructions,
)


def test_no_heldout_template_or_synonym_reaches_training():
    train = [w for t in list_tasks() for w in task_wordings(t, "train")]
    train_text = "\n".join(w.text.lower() for w in train)
    values = [
        dict(d=d, dw=dw, k=k)
        for d, dw in ((30, "thirty"), (90, "ninety"), (180, "one hundred and eighty"))
        for k in (1, 2)
    ]
    for split in ("calibration", "evaluation"):
        for piece in grammar_pieces(split):
            # a whole held-out phrase (rendered), or the fixed text of a held-out template, is in no training wording
            texts = [piece.split("{x}")[0]] if "{x}" in piece else {piece.format(**v) for v in values}
            for text in texts:
                assert text.strip(" ,:?.").lower() not in train_text, (split, piece)
    # every training wording is made of training pieces only (or is a registered instruction)
    train_pieces = set(grammar_pieces("train")) | {""}
    assert all(w.pieces == ("registered",) or set(w.pieces) <= train_pieces for w in train)
    # the three splits share no wording, and held-out ones are made of their own split's pieces
    for t in ("mnist_rot120", "digits_evenodd", "wine", "synthetic2", "mnist1d_reverse"):
        sets = {s: {w.text for w in task_wordings(t, s)} for s in SPLITS}
        assert all(sets[s] for s in SPLITS)
        assert not (sets["train"] & sets["calibration"] or sets["train"] & sets["evaluation"])
        assert not sets["calibration"] & sets["evaluation"]
        for s in ("calibration", "evaluation"):
            assert all(set(w.pieces) <= set(grammar_pieces(s)) | {""} for w in task_wordings(t, s))
    assert not set(unrelated_instructions("calibration")) & set(unrelated_instructions("evaluation"))


def test_wordings_are_deterministic_and_keep_the_task_specific():
    assert training_instructions("mnist_rot90")[0] == get_task("mnist_rot90").instruction
    assert heldout_instructions("mnist_rot120", n=4) == heldout_instructions("mnist_rot120", n=4)
    assert all("120" in w or "hundred and twenty" in w for w in heldout_instructions("mnist_rot120"))
    assert all("2" in w for w in heldout_instructions("synthetic2"))
    with pytest.raises(ValueError, match="split"):
        task_wordings("mnist", "test")


def test_calibrate_threshold_separates_and_reports_rates():
    t, stats = calibrate_threshold([0.7, 0.8, 0.9, 0.55], [0.2, 0.3, 0.4])
    assert t == pytest.approx(0.475) and stats["heldout_flag_rate"] == 0 and stats["unrelated_flag_rate"] == 1
    # overlapping sets: the lowest balanced error (1 of 4 wordings flagged beats 1 of 3 unrelated missed)
    t, stats = calibrate_threshold([0.7, 0.8, 0.9, 0.55], [0.2, 0.3, 0.6])
    assert (
        t == pytest.approx(0.65) and stats["heldout_flag_rate"] == 0.25 and stats["unrelated_flag_rate"] == 1
    )
    with pytest.raises(ValueError, match="calibration needs"):
        calibrate_threshold([], [0.1])


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    arch = get_architecture("tiny_cnn")
    layout = WeightLayout.from_state_dict(arch.build().state_dict())
    vq = IGPGVQVAEModel(IGPGVQVAEConfig.from_preset("tiny"))
    vq.fit_normalization([(layout, layout.vectorize(arch.build().state_dict()))])
    prior = IGPGPriorModel(
        IGPGPriorConfig.from_preset(
            "tiny", vocab_size=64, tokens_per_chunk=2, block_overlap=16, chunk_size=vq.config.chunk_size
        )
    )
    enc, tok = load_text_encoder()
    tasks = {
        t: KnownTask(t, get_task(t).instruction, list(training_instructions(t)[:8]), [arch.text()], 3, 50)
        for t in ("mnist", "mnist_rot90", "mnist_invert")
    }
    calib = [w for t in tasks for w in heldout_instructions(t, "calibration")]
    record_known_conditions(
        prior, tasks, lambda xs: encode_text(xs, enc, tok), calib, list(unrelated_instructions("calibration"))
    )
    return IGPGPipeline(vqvae=vq.eval(), prior=prior.eval(), text_encoder=enc, tokenizer=tok)


def test_unrelated_instruction_and_unknown_architecture_warn_and_are_flagged(pipe):
    with pytest.warns(OutOfDistributionWarning, match="out of distribution"):
        out = pipe("Translate English sentences into French", architecture="tiny_cnn", seed=0)
    assert out.conditions.out_of_distribution and out.conditions.similarity < out.conditions.threshold
    assert out.conditions.architecture_known and len(out.state_dicts) == 1  # flagged, still generated
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", OutOfDistributionWarning
        )  # a held-out wording of a known task: no warning
        ok = pipe(
            "Can you build a network that recognises digits that people wrote on paper?", "tiny_cnn", seed=0
        )
    assert not ok.conditions.out_of_distribution and ok.conditions.nearest_tasks[0][0] == "mnist"
    assert [t for t, _ in ok.conditions.nearest_tasks] and len(ok.conditions.nearest_tasks) == 3
    with pytest.warns(OutOfDistributionWarning, match="never trained on"):
        other = pipe(
            "Classify handwritten digits", architecture=get_architecture("tiny_cnn", activation="relu")
        )
    assert other.conditions.architecture_known is False and other.conditions.nearest_architecture
    with pytest.warns(OutOfDistributionWarning):
        assert pipe.check_instruction("Predict house prices from square footage").out_of_distribution


def test_known_tasks_saved_and_reloaded_with_the_pipeline(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    again = IGPGPipeline.from_pretrained(tmp_path)
    assert again.known_tasks() == pipe.known_tasks() and set(again.known_tasks()) == {
        "mnist",
        "mnist_rot90",
        "mnist_invert",
    }
    assert again.known_architectures() == [get_architecture("tiny_cnn").text()]
    assert torch.equal(again.prior.known_text_embeds, pipe.prior.known_text_embeds)
    assert again.prior.config.ood_threshold == pipe.prior.config.ood_threshold
    card = (tmp_path / "README.md").read_text()
    assert (
        "mnist_rot90" in card
        and get_task("mnist_invert").instruction in card
        and "out of distribution" in card
    )


def test_identify_task_and_match_known_task_condition_on_the_nearest_known_instruction(pipe):
    wording = "Can you build a network that recognises digits that people wrote on paper?"
    ranked = pipe.identify_task(wording, "tiny_cnn", top_k=3)
    assert [t for t, _ in ranked][0] == "mnist" and len(ranked) == 3
    assert ranked == sorted(ranked, key=lambda p: -p[1])
    with pytest.raises(ValueError, match="top_k"):
        pipe.identify_task(wording, top_k=0)
    with pytest.raises(ValueError, match="non-empty"):
        pipe.identify_task("  ")
    # an architecture no known task was trained on: every known task competes
    with pytest.warns(OutOfDistributionWarning, match="no known task was trained on the architecture"):
        assert len(pipe.identify_task(wording, get_architecture("tiny_cnn", activation="relu"), top_k=5)) == 3
    out = pipe(wording, "tiny_cnn", seed=0, match_known_task=True)
    assert out.conditioning_instructions == [pipe.known_tasks()["mnist"].instruction]
    same = pipe(pipe.known_tasks()["mnist"].instruction, "tiny_cnn", seed=0)
    assert torch.equal(out.token_ids, same.token_ids)  # exactly the canonical instruction's draw
    # the out-of-distribution check still judges the text as given
    with pytest.warns(OutOfDistributionWarning, match="out of distribution"):
        far = pipe("Translate English sentences into French", "tiny_cnn", seed=0, match_known_task=True)
    assert far.conditions.out_of_distribution and far.conditions.instruction.startswith("Translate")


def test_support_accuracy_selection_keeps_the_candidates_that_fit_the_samples(pipe):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 1, 28, 28, generator=g), torch.randint(0, 10, (30,), generator=g)
    kw = dict(dataset=(x, y), select_by="support_accuracy", seed=3)
    every = pipe("Classify handwritten digits", "tiny_cnn", num_samples=4, **kw)  # 2 x 4 candidates, all kept
    best = pipe("Classify handwritten digits", "tiny_cnn", num_samples=1, candidates_per_sample=4, **kw)
    assert every.num_candidates == best.num_candidates == 8 and len(every.state_dicts) == 4
    acc = every.support_accuracy
    assert acc == sorted(acc, reverse=True)  # best first
    from igpg_hf.candidate_selection import support_accuracy

    arch = get_architecture("tiny_cnn")
    assert (
        support_accuracy(arch.build, every.state_dicts, x, y) == acc
    )  # the reported scores are the real ones
    # the same pool of candidates (same generators): the kept one is the pool's best
    assert best.support_accuracy == acc[:1]
    assert all(torch.equal(best.state_dicts[0][k], every.state_dicts[0][k]) for k in best.state_dicts[0])
    # other known tasks' instructions join the pool, with and without the samples as condition
    wide = pipe("Classify handwritten digits", "tiny_cnn", num_samples=2, candidate_tasks=2, **kw)
    assert wide.num_candidates == 2 * 3 * 2 and wide.support_accuracy == sorted(wide.support_accuracy)[::-1]
    assert set(wide.conditioning_instructions) <= {"Classify handwritten digits"} | {
        k.instruction for k in pipe.known_tasks().values()
    }
    with pytest.raises(ValueError, match="select_by='support_accuracy'"):
        pipe("Classify handwritten digits", "tiny_cnn", candidate_tasks=1, dataset=(x, y))
    with pytest.raises(ValueError, match="labelled samples"):
        pipe("Classify handwritten digits", "tiny_cnn", select_by="support_accuracy")
    with pytest.raises(ValueError, match="select_by must be"):
        pipe("Classify handwritten digits", "tiny_cnn", select_by="accuracy")
    # labels and samples that cannot score a candidate: a clear error, never a silent figure (newcomer check)
    for bad_y, match in (
        (y.float() + 0.5, "whole class indices"),
        (y - 5, "class indices 0, 1"),
        (torch.nn.functional.one_hot(y, 10), "one class index per sample"),
    ):
        with pytest.raises(ValueError, match=match):
            pipe("Classify handwritten digits", "tiny_cnn", dataset=(x, bad_y), select_by="support_accuracy")
    with pytest.raises(ValueError, match="do not fit the architecture"):
        pipe(
            "Classify handwritten digits", "tiny_cnn", dataset=(x.flatten(1), y), select_by="support_accuracy"
        )


def test_identify_task_measures_through_the_priors_own_text_pooling(pipe):
    from igpg_hf.conditioning import encode_text_states, pad_text_states

    cfg = pipe.prior.config.to_dict()
    cfg["text_pooling"] = "attention"
    cfg["identify_lexical_weight"] = 0.0  # the pooled cosine alone (the words' part: the next test but one)
    prior = IGPGPriorModel(IGPGPriorConfig.from_dict(cfg)).eval()
    prior.register_buffer("known_text_embeds", pipe.prior.known_text_embeds.clone())
    pooled_pipe = IGPGPipeline(
        vqvae=pipe.vqvae, prior=prior, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    wording = "Give me a model for handwritten digits turned a quarter turn"
    got = dict(pooled_pipe.identify_task(wording, top_k=3))

    def pooled(texts):
        with torch.no_grad():
            return torch.nn.functional.normalize(
                prior.text_pool(
                    *pad_text_states(encode_text_states(texts, pipe.text_encoder, pipe.tokenizer))
                ),
                dim=-1,
            )

    q = pooled([wording])
    for task, known in pipe.known_tasks().items():
        assert got[task] == pytest.approx(float((q @ pooled(known.wordings).T).max()), abs=2e-4)


def test_task_posterior_selection_keeps_the_candidates_the_prior_ties_to_the_task(pipe):
    from igpg_hf.candidate_selection import condition_posterior
    from igpg_hf.sampling import score_weight_tokens

    text = "Classify handwritten digits"
    kw = dict(select_by="task_posterior", candidate_tasks=2, seed=5)
    every = pipe(text, "tiny_cnn", num_samples=4, **kw)  # 4 candidates, all kept, best first
    best = pipe(text, "tiny_cnn", num_samples=1, candidates_per_sample=4, **kw)
    assert every.num_candidates == best.num_candidates == 4 and len(every.state_dicts) == 4
    post, ll = every.task_posterior, every.log_likelihood
    assert all(0.0 <= p <= 1.0 for p in post)
    # those attributed to the instruction's task (posterior >= 1/2) first, each group most likely first
    key = [(p < 0.5, -v) for p, v in zip(post, ll, strict=True)]
    assert key == sorted(key)
    assert best.task_posterior == post[:1] and torch.equal(best.token_ids[0], every.token_ids[0])
    assert every.conditioning_instructions == [text] * 4 and every.support_accuracy is None
    # the reported posteriors are the prior's: the instruction against the known tasks ranked 2nd and 3rd
    ranked = [t for t, _ in pipe.identify_task(text, "tiny_cnn", top_k=3)]
    rivals = [pipe.known_tasks()[t].instruction for t in ranked[1:]]
    texts = [text, *rivals]
    emb = pipe._text_embeddings([*texts, get_architecture("tiny_cnn").text()])
    cond = IGPGConditions(text_embeds=emb[:3], arch_embeds=emb[3:].expand(3, -1), **pipe._text_states(texts))
    from igpg_hf.weights import match_layout

    layout = match_layout(pipe.resolve_architecture("tiny_cnn")[0], pipe.prior.config.trained_layouts, None)
    positions = pipe.prior.weight_positions(layout) if pipe.prior.uses_structure else None
    tok = every.token_ids
    ll = score_weight_tokens(pipe.prior, cond.repeat_interleave(4), tok.repeat(3, 1), positions)
    torch.testing.assert_close(condition_posterior(ll.view(3, 4).T), torch.tensor(post), atol=1e-4, rtol=1e-3)
    # matched to the nearest known task: drawn under its canonical instruction, weighed against the next ones
    matched = pipe(text, "tiny_cnn", match_known_task=True, **kw)
    assert matched.conditioning_instructions == [pipe.known_tasks()[ranked[0]].instruction]
    with pytest.raises(ValueError, match="candidate_tasks=1 or more"):
        pipe(text, "tiny_cnn", select_by="task_posterior")
    # counts and scales of the wrong type: the argument's name, not a deep TypeError (newcomer check)
    for bad in (
        {"candidate_tasks": "3"},
        {"candidate_tasks": 1.5},
        {"candidate_tasks": True},
        {"num_samples": 2.0},
        {"candidates_per_sample": "2"},
        {"guidance_scale": "1.25"},
    ):
        with pytest.raises(TypeError, match=next(iter(bad))):
            pipe(text, "tiny_cnn", **bad)
    with pytest.raises(ValueError, match="candidates_per_sample must be at least 1"):
        pipe(text, "tiny_cnn", candidates_per_sample=0, **kw)
    with pytest.raises(TypeError, match="top_k"):
        pipe.identify_task(text, top_k=1.5)
    with pytest.raises(ValueError, match="task_posterior"):
        pipe(text, "tiny_cnn", candidate_tasks=1)


@pytest.mark.slow
def test_instructions_bench_calls_give_the_same_rows_in_worker_processes(pipe):
    """The `instructions` part runs its pipeline calls in the benchmark's worker processes: same rows as in-process."""
    from igpg_hf.evaluation.benchmark import _Pool
    from igpg_hf.evaluation.experiments.instructions import _run_jobs

    spec = get_architecture("tiny_cnn")
    base = {"task": "mnist", "spec": spec.to_json(), "zoo_mean": 90.0, "dataset": None}
    jobs = [
        {**base, "text": "Classify handwritten digits", "kwargs": {"num_samples": 2, "seed": 0}},
        {**base, "text": "digits turned a quarter turn", "kwargs": {"seed": 1, "match_known_task": True}},
        {
            **base,
            "text": "Classify handwritten digits",
            "kwargs": {
                "seed": 2,
                "select_by": "task_posterior",
                "candidate_tasks": 2,
                "candidates_per_sample": 2,
            },
        },
    ]
    here = _run_jobs(pipe, jobs)
    pool = _Pool(2)
    try:
        there = _run_jobs(pipe, jobs, pool)
    finally:
        pool.close()
    assert len(here) == 3 and here[2]["task_posterior"] is not None
    for a, b in zip(here, there, strict=True):
        assert a.keys() == b.keys() and a["conditioned_on"] == b["conditioned_on"]
        assert a["acc"] == pytest.approx(b["acc"], abs=0.11) and a["task_posterior"] == pytest.approx(
            b["task_posterior"], abs=1e-4
        )


def test_task_posterior_weighs_known_architectures_of_the_same_layout(pipe, monkeypatch):
    """A net of the same layout but another activation loads without error and works badly (the general
    pipeline's canonical mnist_rot90 on the relu CNN got the tanh CNN's net: 39.5 % for 88.8 %): the posterior also
    weighs the instruction under each known sibling architecture."""
    from igpg_hf.candidate_selection import condition_posterior
    from igpg_hf.sampling import score_weight_tokens
    from igpg_hf.weights import match_layout

    arch = get_architecture("tiny_cnn")
    sib = arch.replace(activation="gelu" if arch.params["activation"] != "gelu" else "relu")
    other = get_architecture("mlp_small")  # another layout: never a sibling
    known = [arch.text(), sib.text(), other.text(), "a description that is not ArchSpec.text()"]
    monkeypatch.setattr(pipe.prior.config, "known_architectures", known)
    assert pipe.sibling_architectures("tiny_cnn") == [sib.text()]
    assert pipe.sibling_architectures(sib) == [arch.text()]
    assert pipe.sibling_architectures(arch.replace(fc=[7])) == []  # not a known architecture itself
    text = "Classify handwritten digits"
    out = pipe(text, "tiny_cnn", num_samples=3, select_by="task_posterior", candidate_tasks=1, seed=2)
    ranked = [t for t, _ in pipe.identify_task(text, "tiny_cnn", top_k=2)]
    rival = pipe.known_tasks()[ranked[1]].instruction
    texts = [text, rival, text]
    emb = pipe._text_embeddings([text, rival, arch.text(), sib.text()])
    cond = IGPGConditions(
        text_embeds=emb[[0, 1, 0]],
        arch_embeds=emb[[2, 2, 3]],
        **pipe._text_states(texts),
    )
    layout = match_layout(pipe.resolve_architecture("tiny_cnn")[0], pipe.prior.config.trained_layouts, None)
    positions = pipe.prior.weight_positions(layout) if pipe.prior.uses_structure else None
    ll = score_weight_tokens(pipe.prior, cond.repeat_interleave(3), out.token_ids.repeat(3, 1), positions)
    torch.testing.assert_close(
        condition_posterior(ll.view(3, 3).T), torch.tensor(out.task_posterior), atol=1e-4, rtol=1e-3
    )


def test_architecture_descriptions_read_back():
    from igpg_hf.zoo.architectures import ArchSpec, list_architectures

    for name in list_architectures():
        spec = get_architecture(name)
        assert ArchSpec.from_text(spec.text()).text() == spec.text()
    no_norm = get_architecture("resnet20").replace(norm="none")
    assert ArchSpec.from_text(no_norm.text()).params["norm"] == "none"
    for bad in (
        "tiny_cnn",
        "cnn: conv channels [8]",
        "mlp: input 4, hidden [16], classes 3, activation relu, x",
    ):
        with pytest.raises(ValueError, match="not an architecture description"):
            ArchSpec.from_text(bad)
    with pytest.raises(ValueError, match="square"):
        ArchSpec.from_text(get_architecture("tiny_cnn").text().replace("1x28x28", "1x28x27"))


def test_identify_task_adds_the_words_the_embeddings_blur(pipe, monkeypatch):
    """Numbers and words like "horizontal" decide between tasks of one source; sentence embeddings blur them
    (held-out "spun by 180 degrees" went to mnist_rot90 on the general pipeline). identify_task adds the TF-IDF
    cosine of the words, weighted by the prior config's identify_lexical_weight."""
    from igpg_hf.conditioning.lexical import LexicalTaskIndex, words

    assert words("28x28 images, Rotated by 90!") == ["28x28", "images", "rotated", "by", "90"]
    index = LexicalTaskIndex(
        {
            "rot90": ["digits rotated by 90 degrees", "mnist turned 90 degrees"],
            "rot180": ["digits rotated by 180 degrees", "mnist upside down, 180 degrees"],
            "flip": ["digits mirrored across the horizontal axis"],
        }
    )
    sim = index.similarity("handwritten digits spun by 180 degrees")
    assert sim["rot180"] > sim["rot90"] and sim["rot180"] > 0
    assert index.similarity("horizontal axis reflection")["flip"] > 0
    assert set(index.similarity("nothing shared at all").values()) == {0.0}
    # "digits" is in every task: it weighs nothing
    assert index.similarity("digits") == {"rot90": 0.0, "rot180": 0.0, "flip": 0.0}

    text = "Classify handwritten digits rotated by ninety degrees"
    monkeypatch.setattr(pipe.prior.config, "identify_lexical_weight", 0.0)
    cosine = dict(pipe.identify_task(text, top_k=10))
    monkeypatch.setattr(pipe.prior.config, "identify_lexical_weight", 3.0)
    fused = dict(pipe.identify_task(text, top_k=10))
    lexical = LexicalTaskIndex({t: k.wordings for t, k in pipe.known_tasks().items()}).similarity(text)
    assert set(fused) == set(cosine)
    for t in fused:
        assert fused[t] == pytest.approx(cosine[t] + 3.0 * lexical[t], abs=2e-4)
