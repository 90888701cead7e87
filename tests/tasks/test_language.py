import random

from tasks import language as L


def test_documents_are_deterministic_per_seed():
    a = L.document(random.Random(7), 200)
    b = L.document(random.Random(7), 200)
    c = L.document(random.Random(8), 200)
    assert a == b
    assert a != c
    assert len(a) == 200


def test_every_generated_word_is_in_the_vocabulary():
    vocab = set(L.vocabulary())
    rng = random.Random(0)
    for family in L.GENERATORS.values():
        for _ in range(300):
            assert set(family(rng)) <= vocab


def test_vocabulary_sizes_and_templates():
    vocab = L.vocabulary()
    assert len(vocab) == len(set(vocab))
    assert len(L.NAMES) >= 60 and len(set(L.NAMES)) == len(L.NAMES)
    assert len(L.IOI_TRAIN_TEMPLATES) >= 10
    assert not set(L.IOI_HELDOUT_TEMPLATES) & set(L.IOI_TRAIN_TEMPLATES)
    assert set(L.IOI_HELDOUT_TEMPLATES) <= set(L.IOI_TEMPLATES)


def test_ioi_training_sentences_never_use_heldout_material():
    rng = random.Random(1)
    heldout_names = set(L.HELDOUT_NAMES)
    for _ in range(2000):
        words = L.ioi_sentence(rng)
        assert not heldout_names & set(words)
        template = (words[0], tuple(words[4:7]), words[10])
        assert template in L.IOI_TRAIN_TEMPLATES
        # the answer is the name that appears once before it
        a, b, s2, answer = words[1], words[3], words[9], words[-2]
        assert s2 in (a, b) and answer == (b if s2 == a else a)


def test_heldout_names_still_occur_in_training_documents():
    words = set(L.document(random.Random(2), 20000))
    assert set(L.HELDOUT_NAMES) <= words


def test_years_continue_later_and_lists_repeat():
    rng = random.Random(3)
    for _ in range(200):
        w = L.years_sentence(rng)
        assert int(w[-2]) > int(w[7])
        s = L.induction_sentence(rng)
        half = (len(s) - 1) // 2
        assert s[:half] == s[half:-1]
