"""Concept labels read back from the toy language's generator (tasks/concepts.py)."""

import random

import pytest

from tasks import language as L
from tasks.concepts import Concepts, label_sentence, label_text, labelled_corpus, labelled_document
from tasks.corpus import corpus_tokens
from tests.helpers import TOK


def words(text: str) -> list[str]:
    return text.split()


def test_ioi_sentence_roles_appear_where_the_text_reveals_them():
    labels = label_sentence("ioi", words("When Mary and John went to the store , John gave a book to Mary ."))
    assert [lab["slot"] for lab in labels][:4] == ["ioi:intro", "ioi:A", "ioi:and", "ioi:B"]
    assert labels[9]["slot"] == "ioi:S2" and labels[14]["slot"] == "ioi:answer"
    assert labels[1]["class"] == "name" and labels[7]["class"] == "place" and labels[12]["class"] == "object"
    assert "ioi.IO" not in labels[8] and "ioi.B" not in labels[2]  # not yet revealed
    assert {k: labels[13][k] for k in ("ioi.IO", "ioi.S", "ioi.order")} == {
        "ioi.IO": "Mary",
        "ioi.S": "John",
        "ioi.order": "ABBA",
    }
    baba = label_sentence("ioi", words("When John and Mary went to the store , John gave a book to"))
    assert baba[-1]["ioi.order"] == "BABA" and baba[-1]["ioi.IO"] == "Mary" and baba[-1]["slot"] == "ioi:END"


def test_sva_number_attractor_and_structure():
    pp = label_sentence("sva", words("the dogs near the cat run ."))
    assert pp[1]["sva.number"] == "plural" and pp[1]["number"] == "plural" and "sva.attractor" not in pp[1]
    assert pp[4]["slot"] == "sva:attractor" and pp[4]["sva.attractor"] == "singular"
    assert pp[5]["sva.match"] == "different" and pp[5]["sva.structure"] == "pp" and pp[5]["class"] == "verb"
    rc = label_sentence("sva", words("the dog that the dogs see runs ."))
    assert [lab["slot"] for lab in rc][2:7] == ["sva:that", "sva:the2", "sva:attractor", "sva:tverb", "sva:verb"]
    assert rc[6]["sva.structure"] == "rc" and rc[6]["sva.number"] == "singular" and rc[6]["number"] == "singular"
    simple = label_sentence("sva", words("the girls smile ."))
    assert simple[2]["slot"] == "sva:verb" and "sva.structure" not in simple[2]


def test_years_digits_from_the_start_year_on():
    labels = label_sentence("years", words("the war lasted from the year 17 32 to the year 17 58 ."))
    assert labels[6]["slot"] == "years:century" and labels[6]["years.century"] == "17"
    assert "years.start_tens" not in labels[6]
    assert labels[11]["slot"] == "years:century2" and labels[12]["slot"] == "years:end"
    assert (labels[12]["years.start_tens"], labels[12]["years.start_units"], labels[12]["years.start"]) == (
        "3",
        "2",
        "32",
    )


def test_induction_halves_and_indices():
    labels = label_sentence("induction", words("list : Ann Bob Cal list : Ann Bob Cal ."))
    indices = [lab.get("induction.index") for lab in labels]
    assert indices == [None, None, "0", "1", "2", None, None, "0", "1", "2", None]
    assert labels[3]["induction.half"] == "first" and labels[8]["induction.half"] == "second"
    assert labels[8]["slot"] == "induction:repeat"


@pytest.mark.parametrize(
    "text, kind",
    [
        ("Mary walked to the park .", "motion"),
        ("Mary saw the dog at the park .", "saw"),
        ("Mary has a ring .", "has"),
        ("Mary and Bob liked the zoo .", "liked"),
        ("Mary lost a key at the bank .", "found"),
        ("Mary said hello to Bob .", "hello"),
        ("Mary is very happy .", "state"),
        ("Mary went home then Bob went home .", "home"),
    ],
)
def test_narrative_kinds(text, kind):
    assert label_sentence("narrative", words(text))[-1]["narrative.kind"] == kind


def test_bad_family_is_one_line():
    with pytest.raises(ValueError, match="unknown sentence family 'poem'"):
        label_sentence("poem", ["a"])


def test_labels_agree_with_what_the_generator_drew():
    rng = random.Random(0)
    for _ in range(50):
        ex = L.sample_ioi(rng, "eval")
        prompt = L.ioi_prompt(ex["template"], ex["io"], ex["s"], ex["place"], ex["obj"], ex["order"])
        end = label_sentence("ioi", prompt)[-1]
        assert (end["ioi.IO"], end["ioi.S"], end["ioi.order"]) == (ex["io"], ex["s"], ex["order"])
        plural, plural2 = rng.random() < 0.5, rng.random() < 0.5
        subject = label_sentence("sva", L.sva_subject(rng, rng.choice(("pp", "rc")), plural, plural2))
        assert subject[-1]["sva.number"] == ("plural" if plural else "singular")
        assert subject[-1]["sva.attractor"] == ("plural" if plural2 else "singular")


def test_text_labels_mentions_and_neighbours():
    labels = label_text([("narrative", words("Mary has a ring .")), ("narrative", words("Bob said hello to Mary ."))])
    assert labels[0]["class"] == "bos" and labels[1]["prev"] == "<bos>" and labels[1]["next"] == "has"
    assert labels[9]["next_class"] == "name" and labels[10]["prev_class"] == "function"  # "to Mary"
    names = [(lab["word"], lab["mention"]) for lab in labels if lab["class"] == "name"]
    assert names == [("Mary", "first"), ("Bob", "first"), ("Mary", "repeat")]
    assert "next" not in labels[-1]
    # "to" before the second Mary: a name already in the text comes next; "a" before "ring",
    # "said" before "hello" and "has" (the first time) are not copies, nor is "." before "."
    copies = [(lab["word"], lab.get("copy"), lab.get("copied")) for lab in labels if "copy" in lab]
    assert copies == [("to", "name", "Mary")]
    assert not any("forced" in lab for lab in labels)  # narrative: nothing forces the copy


def test_forced_copies_are_ioi_end_and_inductions_second_half():
    ioi = words("When Mary and John went to the store , John gave a ball to Mary .")
    induction = words("list : Zoe Kate list : Zoe Kate .")
    labels = label_text([("ioi", ioi), ("induction", induction)])
    forced = [(lab["slot"], lab["forced_word"]) for lab in labels if lab.get("forced") == "copy"]
    assert forced == [("ioi:END", "Mary"), ("induction::2", "Zoe"), ("induction:repeat", "Kate")]


def test_labelled_corpus_is_the_training_corpus():
    tokens, labels = labelled_corpus(TOK, "k", 6, 40)
    assert tokens.equal(corpus_tokens(TOK, "k", 6, 40))
    assert [lab["word"] for lab in labels] == TOK.convert_ids_to_tokens(tokens.flatten().tolist())
    assert [lab["word"] for lab in labelled_document(random.Random(1), 30)[1:]] == L.document(random.Random(1), 30)


def test_concepts_hold_where_their_label_does():
    _, labels = labelled_corpus(TOK, "k", 16, 64)
    concepts = Concepts.of(labels, min_count=3)
    names = set(concepts.names)
    assert {"class=name", "mention=repeat", "word=the"} <= names
    holds = concepts.holds("class=name")
    assert holds.tolist() == [lab["class"] == "name" for lab in labels]
    assert any(n.startswith("slot=ioi:END & ioi.IO=") for n in names)
    counts = dict(zip(concepts.names, concepts.counts.tolist(), strict=True))
    assert min(counts.values()) >= 3 and counts["word=the"] == sum(lab["word"] == "the" for lab in labels)


def test_concepts_need_the_toy_languages_tokenizer():
    from circuits.core.errors import CircuitsError
    from tasks.tokenizer import build_tokenizer
    from tests.hf_builders import gpt2_tokenizer

    with pytest.raises(CircuitsError, match="splits words into subword pieces") as err:
        labelled_corpus(gpt2_tokenizer(), "k", 2, 16)
    assert "\n" not in str(err.value) and "toy language" in str(err.value)
    few = build_tokenizer([w for w in L.vocabulary() if w != "Mary"])
    with pytest.raises(CircuitsError, match="lacks 'Mary'"):
        labelled_corpus(few, "k", 2, 16)
