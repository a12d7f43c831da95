"""Sentence embeddings, BUCC mining and threshold, Tatoeba, the retrieval CLI, real files."""

import re
import time

import jax
import numpy as np
import pytest

from tests.conftest import require_sample
from xstilts.evals import knn, metrics, retrieval, xtreme_io, xtreme_score
from xstilts.models.xlmr import XLMRConfig, XLMRModel

# -- embeddings ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    config = XLMRConfig.tiny()
    model = XLMRModel(config)
    return config, model, jax.jit(model.init_params)(jax.random.key(0))


def test_sentence_embeddings_layer_and_mask(tiny_model):
    config, model, params = tiny_model
    rng = np.random.default_rng(0)
    lengths = [3, 7, 5, 12, 2]
    ids = np.full((5, 12), config.pad_token_id, np.int32)
    mask = np.zeros((5, 12), np.int32)
    for r, n in enumerate(lengths):  # <s> tokens </s>, then padding
        ids[r, :n] = [0, *rng.integers(4, config.vocab_size - 1, n - 2), 2]
        mask[r, :n] = 1
    layers = config.num_hidden_layers
    emb = retrieval.sentence_embeddings(model.apply, params, ids, mask, layer=1,
                                        num_layers=layers, batch_size=2)
    forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, output_hidden_states=True))
    last, hidden = forward(params, ids, mask)
    assert len(hidden) == layers + 1  # index 0 = embeddings, index L = last layer
    np.testing.assert_allclose(np.asarray(hidden[-1]), np.asarray(last), atol=1e-6)
    h = np.asarray(hidden[1])
    # mean over the mask, <s> and </s> included
    expected = np.stack([h[r, :n].mean(0) for r, n in enumerate(lengths)])
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
    # Padding does not change a sentence's embedding: row 1 run alone, unpadded.
    _, alone = forward(params, ids[1:2, :7], mask[1:2, :7])
    np.testing.assert_allclose(np.asarray(alone[1])[0].mean(0), emb[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layer 3 out of range"):
        retrieval.sentence_embeddings(model.apply, params, ids, mask, layer=3, num_layers=2)
    mask[2] = 0
    with pytest.raises(ValueError, match="row 2 has an all-zero attention mask"):
        retrieval.sentence_embeddings(model.apply, params, ids, mask, layer=1, num_layers=2)


def test_char_ngram_encoder_is_deterministic():
    a = retrieval.char_ngram_embeddings(["Hello world", "hello WORLD", "bonjour"], dim=64)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(a[0], a[1])  # lower-cased
    assert a[0] @ a[2] < 0.9
    np.testing.assert_array_equal(a, retrieval.char_ngram_embeddings(
        ["Hello world", "hello WORLD", "bonjour"], dim=64))


# -- BUCC mining, against a literal numpy rendering of XTREME's mine_bitext ----------------


def xtreme_mine_max(x, y, k):
    """utils_retrieve.mine_bitext(mode='mine', retrieval='max') with brute-force knn."""
    sims = x @ y.T
    x2y_ind = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    y2x_ind = np.argsort(-sims.T, axis=1, kind="stable")[:, :k]
    x2y_mean = np.take_along_axis(sims, x2y_ind, 1).mean(1)
    y2x_mean = np.take_along_axis(sims.T, y2x_ind, 1).mean(1)

    def score_candidates(a, b, ind, fwd_mean, bwd_mean):
        scores = np.zeros(ind.shape)
        for i in range(scores.shape[0]):
            for j in range(scores.shape[1]):
                scores[i, j] = a[i].dot(b[ind[i, j]]) / ((fwd_mean[i] + bwd_mean[ind[i, j]]) / 2)
        return scores

    fwd_scores = score_candidates(x, y, x2y_ind, x2y_mean, y2x_mean)
    bwd_scores = score_candidates(y, x, y2x_ind, y2x_mean, x2y_mean)
    fwd_best = x2y_ind[np.arange(x.shape[0]), fwd_scores.argmax(axis=1)]
    bwd_best = y2x_ind[np.arange(y.shape[0]), bwd_scores.argmax(axis=1)]
    indices = np.stack((np.concatenate((np.arange(x.shape[0]), bwd_best)),
                        np.concatenate((fwd_best, np.arange(y.shape[0])))), axis=1)
    scores = np.concatenate((fwd_scores.max(axis=1), bwd_scores.max(axis=1)))
    seen_src, seen_trg, out = set(), set(), []
    for i in np.argsort(-scores, kind="stable"):
        src_ind, trg_ind = indices[i]
        if src_ind not in seen_src and trg_ind not in seen_trg:
            seen_src.add(src_ind)
            seen_trg.add(trg_ind)
            if scores[i] > 0:
                out.append((int(src_ind), int(trg_ind), scores[i]))
    return out


def test_mine_max_equals_xtreme_algorithm():
    rng = np.random.default_rng(3)
    y = knn.l2_normalize(rng.standard_normal((260, 16)))
    x = knn.l2_normalize(np.concatenate([y[:150] + 0.1 * rng.standard_normal((150, 16)),
                                         rng.standard_normal((90, 16))]))  # 150 true pairs
    ours = retrieval.mine_max(knn.knn(x, y, 4, block_size=64))
    ref = xtreme_mine_max(x, y, 4)
    assert [(s, t) for s, t, _ in ours] == [(s, t) for s, t, _ in ref]
    np.testing.assert_allclose([v for *_, v in ours], [v for *_, v in ref], atol=1e-5)
    assert sum(s == t for s, t, _ in ours[:100]) > 90  # the planted pairs come first


def test_bucc_candidates_unify_and_drop_repeated_sentences():
    rng = np.random.default_rng(4)
    base = knn.l2_normalize(rng.standard_normal((6, 8)))
    src_sents = ["s0", "s1", "s2", "s1", "s4", "s5"]  # "s1" twice: ambiguous id, dropped
    trg_sents = ["t0", "t1", "t2", "t3", "t4", "t5"]
    src_emb = base.copy()
    src_emb[3] = src_emb[1]  # same text, same embedding
    cands = retrieval.bucc_candidates([f"src-{i}" for i in range(6)], src_sents, src_emb,
                                      [f"trg-{i}" for i in range(6)], trg_sents, base,
                                      block_size=8)
    # Mining ran on 5 unique source sentences; pairs of the repeated one never come out.
    assert {("src-0", "trg-0"), ("src-2", "trg-2"), ("src-5", "trg-5")} <= set(cands)
    assert all(s not in ("src-1", "src-3") for s, _ in cands)
    with pytest.raises(ValueError, match="3 ids, 2 sentences and 3 embeddings"):
        retrieval.bucc_candidates(["a", "b", "c"], ["x", "y"], base[:3], ["t"], ["t"], base[:1])


def xtreme_bucc_optimize(candidate2score, gold):
    """utils_retrieve.bucc_optimize, as written (IndexError at the last candidate)."""
    items = sorted(candidate2score.items(), key=lambda x: -x[1])
    ngold, nextract, ncorrect, threshold, best_f1 = len(gold), 0, 0, 0, 0
    for i in range(len(items)):
        nextract += 1
        if items[i][0] in gold:
            ncorrect += 1
        if ncorrect > 0:
            precision, recall = ncorrect / nextract, ncorrect / ngold
            f1 = 2 * precision * recall / (precision + recall)
            if f1 > best_f1:
                best_f1 = f1
                threshold = (items[i][1] + items[i + 1][1]) / 2
    return threshold


def test_bucc_threshold_matches_xtreme_without_ties():
    rng = np.random.default_rng(5)
    for trial in range(20):
        scores = rng.permutation(200) / 100 + 0.5  # distinct scores
        cands = {(f"s{i}", f"t{i}"): float(v) for i, v in enumerate(scores)}
        # gold: mostly high-scoring pairs, plus pairs never mined; the last candidate wrong
        ranked = sorted(cands, key=lambda p: -cands[p])
        gold = {p for p in ranked[:-1] if rng.random() < (0.9 if ranked.index(p) < 80 else .1)}
        gold |= {("s-x", "t-x"), ("s-y", "t-y")}
        ours = retrieval.bucc_optimize(cands, gold)
        assert ours.threshold == pytest.approx(xtreme_bucc_optimize(cands, gold)), trial
        extracted = retrieval.bucc_extract(cands, ours.threshold)
        assert metrics.bucc_f1(["\t".join(p) for p in gold],
                               ["\t".join(p) for p in extracted])["f1"] == pytest.approx(ours.f1)


def test_bucc_threshold_edge_cases():
    gold = {("a", "1"), ("b", "2"), ("c", "3")}
    # Best F1 at the last candidate: XTREME raises IndexError, we cut at the last score.
    cands = {("a", "1"): 0.9, ("b", "2"): 0.8, ("c", "3"): 0.7}
    with pytest.raises(IndexError):
        xtreme_bucc_optimize(cands, gold)
    best = retrieval.bucc_optimize(cands, gold)
    assert (best.threshold, best.f1) == (0.7, 100.0)
    # A tie at the threshold: ("b","2") and ("x","9") share 0.8. XTREME would cut after the
    # correct one (prefix F1 4/5) and set th = 0.8, extracting both (F1 2/3 * ... lower).
    # We only cut where the score drops: the best achievable cut is after "a" (F1 0.5)
    # or after the tie (P 2/3, R 2/3 -> F1 2/3); the latter wins, and it is what extraction
    # at the returned threshold really gives.
    cands = {("a", "1"): 0.9, ("b", "2"): 0.8, ("x", "9"): 0.8, ("y", "8"): 0.5}
    assert xtreme_bucc_optimize(cands, gold) == pytest.approx(0.8)
    best = retrieval.bucc_optimize(cands, gold)
    assert best.threshold == pytest.approx(0.65) and best.f1 == pytest.approx(200 / 3)
    assert retrieval.bucc_extract(cands, best.threshold) == {("a", "1"), ("b", "2"), ("x", "9")}
    # Nothing correct: threshold 0 (as XTREME), F1 0.
    assert retrieval.bucc_optimize({("x", "9"): 1.0}, gold).f1 == 0.0
    with pytest.raises(ValueError, match="gold is empty"):
        retrieval.bucc_optimize(cands, set())


def test_bucc_evaluate_tunes_on_dev_and_applies_to_test():
    dev = {("a", "1"): 0.9, ("b", "2"): 0.7, ("c", "9"): 0.5}
    dev_gold = {("a", "1"), ("b", "2")}  # best cut after 0.7: th = 0.6
    test = {("d", "4"): 0.95, ("e", "5"): 0.62, ("f", "8"): 0.58}
    test_gold = {("d", "4"), ("f", "8")}
    result = retrieval.bucc_evaluate(dev, dev_gold, test, test_gold)
    assert result["threshold"] == pytest.approx(0.6)
    assert result["test_predictions"] == [("d", "4"), ("e", "5")]
    assert result["test"]["f1"] == pytest.approx(50.0)  # P 1/2, R 1/2
    assert result["test_oracle"]["f1"] == pytest.approx(80.0)  # tuned on test: all three


# -- Tatoeba and the command line ---------------------------------------------------------


def test_tatoeba_predict_direction_and_accuracy():
    rng = np.random.default_rng(6)
    other = knn.l2_normalize(rng.standard_normal((50, 12)))
    english = knn.l2_normalize(other[rng.permutation(50)][:30] + 0.1 * rng.standard_normal(
        (30, 12)))  # 30 English queries, each a noisy copy of one non-English row
    pred = retrieval.tatoeba_predict(english, other, block_size=16)
    assert pred.shape == (30,)
    np.testing.assert_array_equal(pred, np.argmax(english @ other.T, axis=1))
    assert retrieval.tatoeba_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 75.0
    with pytest.raises(ValueError, match="3 predictions for 4 sentences"):
        retrieval.tatoeba_accuracy([1, 2, 3], [1, 2, 3, 4])


def test_centering_removes_a_language_offset(tmp_path, capsys):
    """Two languages = shared content + a large per-language offset (what mean-pooled small
    encoders show): uncentred cosine is ruled by the offset and collapses onto a hub; centring
    each side on its own mean recovers every translation."""
    rng = np.random.default_rng(11)
    content = rng.standard_normal((60, 16))
    offsets = 8.0 * rng.standard_normal((2, 16))
    other = content + offsets[0] + 0.05 * rng.standard_normal((60, 16))
    english = content + offsets[1] + 0.05 * rng.standard_normal((60, 16))
    np.testing.assert_allclose(retrieval.center(other), other - other.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(retrieval.center(other).mean(axis=0), 0.0, atol=1e-5)
    gold = np.arange(60)
    raw = retrieval.tatoeba_accuracy(retrieval.tatoeba_predict(english, other), gold)
    centred = retrieval.tatoeba_accuracy(retrieval.tatoeba_predict(
        retrieval.center(english), retrieval.center(other)), gold)
    assert raw < 50.0 and centred == 100.0
    # BUCC-style mining finds every pair only after centring.
    mined = retrieval.mine_max(knn.knn(knn.l2_normalize(retrieval.center(english)),
                                       knn.l2_normalize(retrieval.center(other)), 4))
    assert sorted((s, t) for s, t, _ in mined) == [(i, i) for i in range(60)]
    # The command line's --center does the same.
    np.save(tmp_path / "en.npy", english.astype(np.float32))
    np.save(tmp_path / "xx.npy", other.astype(np.float32))
    assert retrieval.main(["tatoeba", "--src", str(tmp_path / "en.npy"), "--trg",
                           str(tmp_path / "xx.npy"), "--center"]) == 0
    assert [int(v) for v in capsys.readouterr().out.split()] == gold.tolist()
    with pytest.raises(ValueError, match="non-empty"):
        retrieval.center(np.zeros((0, 4)))


def test_cli_mine_and_tatoeba(tmp_path, capsys):
    rng = np.random.default_rng(7)
    src, trg = rng.standard_normal((40, 8)), rng.standard_normal((55, 8))
    np.save(tmp_path / "src.npy", src.astype(np.float32))
    np.save(tmp_path / "trg.npy", trg.astype(np.float32))
    out = tmp_path / "mined.tsv"
    assert retrieval.main(["mine", "--src", str(tmp_path / "src.npy"), "--trg",
                           str(tmp_path / "trg.npy"), "--out", str(out)]) == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    ref = xtreme_mine_max(knn.l2_normalize(src), knn.l2_normalize(trg), 4)
    assert [(int(s), int(t)) for s, t, _ in rows] == [(s, t) for s, t, _ in ref]
    np.testing.assert_allclose([float(v) for *_, v in rows], [v for *_, v in ref], atol=1e-5)
    capsys.readouterr()
    assert retrieval.main(["tatoeba", "--src", str(tmp_path / "src.npy"), "--trg",
                           str(tmp_path / "trg.npy")]) == 0
    printed = [int(v) for v in capsys.readouterr().out.split()]
    cos = knn.l2_normalize(src) @ knn.l2_normalize(trg).T
    assert printed == np.argmax(cos, axis=1).tolist()
    # bad input: dimension mismatch, missing file, not a matrix
    np.save(tmp_path / "bad.npy", np.ones((3, 5), np.float32))
    np.save(tmp_path / "vec.npy", np.ones(5, np.float32))
    for args, message in ((["--trg", str(tmp_path / "bad.npy")], "has dimension 8 but"),
                          (["--trg", str(tmp_path / "nope.npy")], "no such file"),
                          (["--trg", str(tmp_path / "vec.npy")], "expected a non-empty float")):
        assert retrieval.main(["tatoeba", "--src", str(tmp_path / "src.npy"), *args]) == 2
        assert message in capsys.readouterr().err


# -- real files end to end ----------------------------------------------------------------


def anchor_text(sentence):
    """Digits and Latin words: the only characters Chinese and English sentences share."""
    return " ".join(re.findall(r"[0-9]+|[A-Za-z]{2,}", sentence)) or "-"


def test_bucc_zh_en_end_to_end(tmp_path):
    """BUCC 2018 zh-en "sample" split, cut into a dev half (zh ids in the first half) for the
    threshold and a test half it is applied to; embeddings: hashed character n-grams of each
    sentence's digits and Latin words."""
    root = require_sample("bucc2018")
    zh_ids, zh = retrieval.read_bucc_sentences(root / "zh-en.dev.zh")
    en_ids, en = retrieval.read_bucc_sentences(root / "zh-en.dev.en")
    gold = retrieval.read_bucc_gold(root / "zh-en.dev.gold")
    assert len(zh) == 8624 and len(en) == 13589 and len(gold) == 257
    t0 = time.perf_counter()
    zh_emb = retrieval.char_ngram_embeddings([anchor_text(s) for s in zh], dim=256)
    en_emb = retrieval.char_ngram_embeddings([anchor_text(s) for s in en], dim=256)
    half = len(zh) // 2
    splits = {}
    for name, rows in (("dev", slice(0, half)), ("test", slice(half, None))):
        ids = zh_ids[rows]
        cands = retrieval.bucc_candidates(ids, zh[rows], zh_emb[rows], en_ids, en, en_emb)
        split_gold = {p for p in gold if p[0] in set(ids)}
        splits[name] = (cands, split_gold)
        assert cands and all(s in set(ids) for s, _ in cands)
    result = retrieval.bucc_evaluate(*splits["dev"], *splits["test"])
    # Written in XTREME's format and scored by the XTREME scorer: the same F1.
    pred_file = xtreme_io.write_bucc_pairs(tmp_path / "bucc2018/test-zh.tsv",
                                           result["test_predictions"])
    gold_file = xtreme_io.write_bucc_pairs(tmp_path / "gold/test-zh.tsv", sorted(splits["test"][1]))
    scored = xtreme_score.score_language("bucc2018", "zh", pred_file, gold_file)
    assert scored["f1"] == pytest.approx(result["test"]["f1"])
    assert result["test_oracle"]["f1"] >= result["test"]["f1"]
    assert result["dev"]["f1"] > 0 and result["threshold"] > 0  # a real cut, tuned on dev
    print(f"\nBUCC zh-en (char n-grams, {time.perf_counter() - t0:.1f} s): threshold "
          f"{result['threshold']:.4f} from dev F1 {result['dev']['f1']:.2f}; test P/R/F1 "
          f"{result['test']['precision']:.2f}/{result['test']['recall']:.2f}/"
          f"{result['test']['f1']:.2f}; oracle test F1 {result['test_oracle']['f1']:.2f}")


def test_tatoeba_all_36_languages_end_to_end(tmp_path):
    root = require_sample("tatoeba/v1")
    langs = xtreme_score.TASK2LANGS["tatoeba"]
    mesh = knn.default_mesh()
    accuracies = {}
    for lang in langs:
        code = xtreme_score.language(lang).tatoeba_code
        other = (root / f"tatoeba.{code}-eng.{code}").read_text(encoding="utf-8").splitlines()
        english = (root / f"tatoeba.{code}-eng.eng").read_text(encoding="utf-8").splitlines()
        assert len(other) == len(english) > 100, lang
        e_emb = retrieval.char_ngram_embeddings(english, dim=1024)
        o_emb = retrieval.char_ngram_embeddings(other, dim=1024)
        pred = retrieval.tatoeba_predict(e_emb, o_emb, mesh=mesh)
        cos = e_emb @ o_emb.T  # brute force; a different index is only allowed on a tie
        np.testing.assert_allclose(cos[np.arange(len(pred)), pred], cos.max(1), atol=1e-6)
        path = xtreme_io.write_lines(tmp_path / f"pred/tatoeba/test-{lang}.tsv", pred)
        labels = xtreme_io.write_lines(tmp_path / f"gold/tatoeba/test-{lang}.tsv",
                                       range(len(english)))
        accuracies[lang] = xtreme_score.score_language("tatoeba", lang, path, labels)["accuracy"]
        assert accuracies[lang] == pytest.approx(
            retrieval.tatoeba_accuracy(pred, np.arange(len(english))))
    mean = sum(accuracies.values()) / len(accuracies)
    print("\nTatoeba accuracy, char n-grams: " + ", ".join(
        f"{lang} {acc:.1f}" for lang, acc in accuracies.items()) + f"; mean {mean:.2f}")
    # Chance is 1/N (about 0.1 %); shared spellings lift Latin-script pairs far above it.
    assert mean > 2 and min(accuracies[lang] for lang in ("af", "nl", "it", "es")) > 5
