"""Finding words among T5's SentencePiece tokens (FLUX's and SD3's third encoder), with a SentencePiece model trained
here from text (no T5 tokenizer can be downloaded): no start token, words split into pieces with the "▁" marker."""

import pytest

from promptseg.text import Label, build_prompt, parse_labels, span_positions, split_to_fit
from promptseg.text.labels import leading_specials, specials

CORPUS = [
    "a photograph of a cat sitting on a sofa", "a dog and a tv monitor in the living room", "the red car left of the tree",
    "a potted plant beside a dining table", "two people riding a motorbike on the road", "a sheep on the grass",
    "an aeroplane in the sky above the sea", "a bottle and a glass on the table", "a bus and a train at the station",
] * 20


@pytest.fixture(scope="module")
def t5_tokenizer(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    from transformers import T5Tokenizer

    folder = tmp_path_factory.mktemp("spm")
    (folder / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    pytest.importorskip("google.protobuf")  # transformers reads a SentencePiece model's pieces with it
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"),
                                   vocab_size=60, model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    return T5Tokenizer.from_pretrained(str(folder), extra_ids=0, model_max_length=48)


def test_t5_tokens_have_no_start_token_and_one_end_token(t5_tokenizer):
    assert leading_specials(t5_tokenizer) == 0 and specials(t5_tokenizer) == 1
    ids = t5_tokenizer("a cat").input_ids
    assert ids[-1] == t5_tokenizer.eos_token_id and len(ids) == len(t5_tokenizer("a cat", add_special_tokens=False).input_ids) + 1


def test_label_positions_are_found_among_sentencepiece_pieces(t5_tokenizer):
    labels = parse_labels(["tv monitor, screen", "potted plant", "cat"])
    tokens = build_prompt(t5_tokenizer, labels, "a photograph of {}", ", ")
    ids = t5_tokenizer(tokens.prompt).input_ids
    pieces = t5_tokenizer.convert_ids_to_tokens(ids)
    for label, spans in zip(labels, tokens.positions):
        for synonym, span in zip(label.synonyms, spans):
            # the pieces at those positions spell the synonym (SentencePiece's "▁" marks a word's start)
            assert "".join(pieces[i] for i in span).replace("▁", " ").strip() == synonym
    text = "the red car left of the tree"
    (span,) = span_positions(t5_tokenizer, text, [(8, 11)])
    pieces = t5_tokenizer.convert_ids_to_tokens(t5_tokenizer(text).input_ids)
    assert "".join(pieces[i] for i in span).replace("▁", "") == "car" and pieces[span[0]].startswith("▁")
    with pytest.raises(ValueError, match="not a whole word"):
        span_positions(t5_tokenizer, text, [(9, 11)])  # "ar": inside a word


def test_long_label_sets_split_by_sentencepiece_length(t5_tokenizer):
    labels = [Label(name, (name,)) for name in ["cat", "dog", "sheep", "bus", "train", "bottle", "sofa", "tree",
                                                 "motorbike", "aeroplane", "potted plant", "dining table"]]
    groups = split_to_fit(t5_tokenizer, labels, "a photograph of {}", ", ")
    assert len(groups) > 1 and [label for group in groups for label in group] == labels
    for group in groups:  # each group fits T5's length, its end token included
        assert len(t5_tokenizer(build_prompt(t5_tokenizer, group, "a photograph of {}", ", ").prompt).input_ids) <= 48
