import pytest
import torch

from promptseg.text import Label, build_prompt, label_scores, parse_labels


def test_parse_labels_synonyms_and_names():
    labels = parse_labels(["cat", " person ,  people  ", "tv monitor"])
    assert labels == [
        Label("cat", ("cat",)),
        Label("person", ("person", "people")),
        Label("tv monitor", ("tv monitor",)),
    ]


@pytest.mark.parametrize(
    "bad, message",
    [([], "no labels"), (["cat", "  "], "label 1"), (["cat,"], "empty synonym"), (["cat", "Cat"], "duplicate label 'Cat'"),
     (["person, people", "people"], "duplicate label 'people'")],
)
def test_parse_labels_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_labels(bad)


def test_parse_labels_rejects_a_bare_string():
    with pytest.raises(TypeError, match="list of strings"):
        parse_labels("cat,dog")


def test_prompt_positions_for_multi_token_words_and_synonyms(tiny):
    tok = tiny.tokenizer
    assert len(tok("grassland", add_special_tokens=False).input_ids) > 1  # not in the tiny vocabulary: split
    labels = parse_labels(["cat", "grassland, grass", "person"])
    built = build_prompt(tok, labels, template="a photograph of {}", joiner=" and ")
    assert built.prompt == "a photograph of cat and grassland and grass and person"
    ids = tok(built.prompt).input_ids
    for label, spans in zip(labels, built.positions):
        for synonym, span in zip(label.synonyms, spans):
            assert ids[span[0] : span[-1] + 1] == tok(synonym, add_special_tokens=False).input_ids
    assert len(built.positions[1][0]) > 1 and len(built.positions[1][1]) == 1
    assert built.length == tok.model_max_length == 20


def test_prompt_that_does_not_fit_names_the_labels(tiny):
    many = parse_labels(["cat", "dog", "person, people", "sky", "tree", "red", "grassland"])
    full = "a photograph of cat and dog and person and people and sky and tree and red and grassland"
    needed = len(tiny.tokenizer(full).input_ids)
    assert needed > 20
    names = r"\['cat', 'dog', 'person', 'sky', 'tree', 'red', 'grassland'\]"
    with pytest.raises(ValueError, match=names + f" needs {needed} tokens but the text encoder takes 20"):
        build_prompt(tiny.tokenizer, many, "a photograph of {}")
    assert build_prompt(tiny.tokenizer, many[:-1], "a photograph of {}").prompt.endswith("red")  # 18 tokens fit
    with pytest.raises(ValueError, match="exactly once"):
        build_prompt(tiny.tokenizer, parse_labels(["cat"]), "no slot")


def test_label_scores_mean_over_tokens_max_over_synonyms():
    cross = torch.tensor([[[0.0, 1.0, 3.0, 0.5, 0.2]]])  # (B=1, N=1, T=5)
    positions = [[[1, 2]], [[3], [4]]]  # label 0: tokens 1-2; label 1: synonyms at 3 and 4
    assert torch.allclose(label_scores(cross, positions), torch.tensor([[[2.0, 0.5]]]))


def test_a_dataset_list_with_shared_synonyms_keeps_its_classes():
    lines = ["blind, screen", "screen door, screen", "screen, crt screen", "screen, silver screen", "screen"]
    with pytest.raises(ValueError, match="duplicate label 'screen'"):
        parse_labels(lines)
    labels = parse_labels(lines, shared_synonyms=True)
    assert [label.synonyms for label in labels] == [("blind",), ("screen door",), ("screen", "crt screen"),
                                                    ("silver screen",), ("screen",)]
    assert [label.name for label in labels] == ["blind", "screen door", "screen", "silver screen", "screen (2)"]
