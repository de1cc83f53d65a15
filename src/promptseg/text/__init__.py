"""Words to tokens: labels and their synonyms, prompts that hold them and where each label's tokens sit (CLIP's BPE
or any tokenizer with the same interface), and the parse of referring sentences (`promptseg.text.language`, spaCy,
optional extra `parse`).

    labels.py    `Label`, `parse_labels`, `build_prompt`, `split_to_fit`, `label_scores`, `span_positions`
    language.py  referring expressions -> referents, their concept words and relations
"""

from promptseg.text.labels import (
    STUFF_WORDS,
    JointTokenizer,
    Label,
    PromptTokens,
    append_to_fit,
    build_prompt,
    fit_prompt,
    fit_synonyms,
    fit_words,
    input_positions,
    is_stuff,
    label_scores,
    parse_labels,
    span_positions,
    split_to_fit,
)

__all__ = ["STUFF_WORDS", "JointTokenizer", "Label", "PromptTokens", "append_to_fit", "build_prompt", "fit_prompt", "fit_synonyms", "fit_words", "input_positions", "is_stuff", "label_scores",
           "parse_labels", "span_positions", "split_to_fit"]
