import pytest

from circuits.toy.model import build_model
from tasks.tokenizer import UnknownWordError, build_tokenizer, encode, load_tokenizer
from tests.helpers import tiny_config


def test_round_trip_and_bos():
    tok = build_tokenizer()
    text = "When Mary and John went to the store , John gave a book to Mary ."
    ids = encode(tok, text)
    assert ids[0] == tok.bos_token_id
    assert len(ids) == len(text.split()) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_punctuation_is_split_off():
    tok = build_tokenizer()
    assert tok.convert_ids_to_tokens(encode(tok, "store, Mary.")) == ["<bos>", "store", ",", "Mary", "."]


def test_unknown_word_is_named():
    with pytest.raises(UnknownWordError, match="'Jonh'.*close: John"):
        encode(build_tokenizer(), "Mary and Jonh went home")


def test_save_load_same_ids(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    text = "the war lasted from the year 17 32 to the year 17 58 ."
    assert load_tokenizer(tmp_path).encode(text) == tok.encode(text)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(Exception, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_transformer_lens_uses_it():
    model = build_model(tiny_config())
    assert model.to_str_tokens("Mary and John.") == ["<bos>", "Mary", "and", "John", "."]
    assert model.to_tokens("Mary").shape == (1, 2)
