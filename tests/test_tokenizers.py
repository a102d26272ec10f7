"""Tokenizers: the word-level vocabulary (one token per number below 1000) and the byte default."""

from __future__ import annotations

import pytest
import torch

from diffcomp.model import build_model, build_task, encode_texts, load_tokenizer
from diffcomp.model.tokenizers import WORDS, ByteTokenizer, WordTokenizer


def test_every_number_below_1000_is_one_token_of_its_own():
    tok = WordTokenizer()
    ids = [tok.tokenize(str(n)) for n in range(1000)]
    assert all(len(row) == 2 and row[0] == tok.bos_id for row in ids)
    assert [row[1] for row in ids] == [tok.number_offset + n for n in range(1000)]


def test_longer_numbers_split_into_groups_of_three_digits_from_the_left():
    tok = WordTokenizer()
    assert tok.tokenize("1234567") == [tok.bos_id] + [tok.number_offset + n for n in (123, 456, 7)]
    assert tok.tokenize("007") == [tok.bos_id, tok.number_offset + 7]  # "007" is the number 7's token


def test_words_marks_and_unknowns():
    tok = WordTokenizer()
    ids = tok.tokenize("What is 3 PLUS 4? Zorp é")
    what, is_, three, plus, four, mark, zorp, accent = ids[1:]
    assert tok.tokenize("what")[1] == what and plus == tok.ids["plus"] and mark == tok.ids["?"]
    assert (three, four) == (tok.number_offset + 3, tok.number_offset + 4)
    assert zorp == accent == tok.unk_id
    assert len(set(ids[1:6])) == 5


def test_vocabulary_is_fixed():
    a, b = WordTokenizer(), WordTokenizer()
    assert a.ids == b.ids and a.vocab_size == b.vocab_size == 3 + 1000 + 32 + len(WORDS)
    assert sorted(a.ids.values()) == list(range(3, a.vocab_size))  # every id used once, none past the end


@pytest.mark.parametrize("task, options", [("arithmetic", {"base": 128, "examples": 400}),
                                           ("fibonacci", {"base": 64, "examples": 50}),
                                           ("sort", {"lengths": [8], "examples": 50})])
def test_the_built_in_questions_have_no_unknown_words(task, options):
    tok = WordTokenizer()
    ids, mask = tok.from_bytes(build_task(task, options, seed=0).dataset("train").tensors["text"])
    if task == "sort":  # the string to sort is one unknown "word"; everything around it is known
        assert ((ids == tok.unk_id).sum(1) <= 1).all()
    else:
        assert not (ids == tok.unk_id).any()


def test_from_bytes_matches_texts_and_pads_on_the_right():
    tok = load_tokenizer("words")
    texts = ["Add 3 and 4", "What is the product of 12 and 100?"]
    ids, mask = tok(texts)
    from_bytes = tok.from_bytes(encode_texts(texts, 48))
    assert torch.equal(ids, from_bytes[0]) and torch.equal(mask, from_bytes[1])
    assert mask.tolist()[0] == [1] * 5 + [0] * (ids.shape[1] - 5)
    assert (ids[0, 5:] == tok.pad_id).all()


def test_model_embedding_fits_the_word_vocabulary():
    task = build_task("arithmetic", {"base": 16, "examples": 32}, seed=0)
    model = build_model({"backbone": "llama", "hidden_size": 16, "heads": 2, "kv_heads": 1, "layers": 1,
                         "tokenizer": "words"}, {"alu": "lookup", "base": 16}, task)
    assert model.backbone.vocab_size == WordTokenizer().vocab_size
    batch = {k: v[:4] for k, v in task.dataset("train").tensors.items()}
    assert model(batch).loss.isfinite()


def test_byte_tokenizer_stays_the_default():
    tok = load_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 258


def test_unknown_tokenizer_name_lists_the_choices():
    with pytest.raises(ValueError, match="expected 'byte', 'words', 'llama3'"):
        load_tokenizer("wrods")
