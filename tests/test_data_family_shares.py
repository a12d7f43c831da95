"""A fair multilingual arm: all9.multilingual keeps all9.en's share per task family, and the
English share inside a multilingual mixture can be pinned."""

from __future__ import annotations

import pytest

from xstilts.data import tasks as T
from xstilts.data.registry import family_shares
from xstilts.data.spec import MixtureSpec

# Train sizes of the real releases (GLUE, SQuAD, ANLI, HellaSwag, Cosmos QA, CommonsenseQA, CCG);
# every translation of MNLI / SQuAD as large as its English source (XTREME's translate-train).
REAL = {"mnli.en": 392_702, "qqp.en": 363_846, "squad_v1.en": 87_599, "squad_v2.en": 130_319,
        "snli.en": 549_367, "anli_r1.en": 16_946, "anli_r2.en": 45_460, "anli_r3.en": 100_459,
        "hellaswag.en": 39_905, "cosmosqa.en": 25_262, "commonsenseqa.en": 9_741,
        "ccg.en": 38_015}


@pytest.fixture
def sizes():
    out = {t: 1000 for t in T.TASKS} | REAL
    out |= {f"mnli.{lang}": REAL["mnli.en"] for lang in T.XNLI_TRANSLATE_TRAIN}
    out |= {f"squad_v1.{lang}": REAL["squad_v1.en"] for lang in T.SQUAD_TRANSLATE_TRAIN}
    return out


def _by_family(rates, families):
    return {family: sum(rates[t] for t in tasks) for family, tasks in families.items()}


def test_all9_multilingual_keeps_the_english_share_of_every_task_family(sizes):
    english = T.mixture_rates("intermediate.all9.en", sizes)
    multi = T.mixture_rates("intermediate.all9.multilingual", sizes)
    assert sum(multi.values()) == pytest.approx(1.0)
    shares = dict(family_shares("intermediate.all9.multilingual", sizes))
    # each family's multilingual mixture gets what its English tasks get in all9.en
    assert shares["intermediate.qqp.multilingual"] == pytest.approx(english["qqp.en"])
    assert shares["intermediate.squad_v1.multilingual"] == pytest.approx(english["squad_v1.en"])
    assert shares["intermediate.mnli.multilingual"] == pytest.approx(english["mnli.en"])
    # QQP has no translations: its rate is the same in both arms (it was 13% -> 3% when the
    # multilingual all9 was one proportional mixture over every language's task)
    assert multi["qqp.en"] == pytest.approx(english["qqp.en"]) == pytest.approx(0.1311, abs=1e-4)
    squad = {t: p for t, p in multi.items() if t.startswith("squad_v1.")}
    assert sum(squad.values()) == pytest.approx(english["squad_v1.en"])
    assert len(squad) == 1 + len(T.SQUAD_TRANSLATE_TRAIN)  # and no TyDiQA (zero-shot)


def test_epochs_of_the_multilingual_all9_count_its_own_larger_data(sizes):
    """(With the equal-steps budget the driver uses all9.en's steps for both arms.)"""
    english = T.mixture_epoch_size("intermediate.all9.en", sizes)
    multi = T.mixture_epoch_size("intermediate.all9.multilingual", sizes)
    assert multi > 5 * english


def test_english_share_pins_the_english_tasks_share():
    spec = MixtureSpec("test.mnli.pinned", ("mnli.en", "mnli.de", "mnli.sw"), rate="temperature",
                       temperature=3.0, english_share=0.5)
    T.register_mixture(spec, replace=True)
    rates = T.mixture_rates(spec.name, {"mnli.en": 1000, "mnli.de": 1000, "mnli.sw": 8000})
    assert rates["mnli.en"] == pytest.approx(0.5)
    assert rates["mnli.sw"] / rates["mnli.de"] == pytest.approx(8 ** (1 / 3))
    with pytest.raises(ValueError, match="english_share 1.5"):
        MixtureSpec("x", ("mnli.en",), english_share=1.5)
    with pytest.raises(ValueError, match="families need match"):
        MixtureSpec("x", families=(("intermediate.mnli.multilingual", "intermediate.mnli.en"),))
