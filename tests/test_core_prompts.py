"""Prompt formats (chat/line/qa/raw), the question span an edit is keyed on, and token roles in batches.

Uses the default model's tokenizer (SmolLM2's, with its chat template) through the tiny model folder."""

from __future__ import annotations

import copy

import pytest
import torch

from sam.core.batching import encode, encode_pairs, encode_prompts
from sam.core.prompts import (Prompt, PromptFormat, Turn, contains_answer, normalize, one_line, repeats)
from sam.errors import InvalidInputError

STYLES = ["chat", "line", "qa", "raw"]
HISTORY = [Turn("Hi  there", "Hello!\nHow can I help?")]


@pytest.fixture(scope="module")
def tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_llama_dir)
    if t.pad_token is None:
        t.pad_token = t.eos_token
    return t


def test_auto_is_chat_with_a_template_and_line_without(tok):
    assert PromptFormat("auto", tok).style == "chat"
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    assert PromptFormat("auto", bare).style == "line"
    with pytest.raises(InvalidInputError, match="chat template"):
        PromptFormat("chat", bare)
    with pytest.raises(InvalidInputError, match="unknown prompt format"):
        PromptFormat("markdown", tok)
    assert PromptFormat("line", None).style == "line"


@pytest.mark.parametrize("style", STYLES)
def test_the_question_span_is_the_question_in_every_style(tok, style):
    fmt = PromptFormat(style, tok)
    for history, system in [((), None), (HISTORY, "Be  brief.\nPlease.")]:
        p = fmt.render("  What is the   capital of\nFrance? ", history, system)
        assert p.question == "What is the capital of France?"  # one line, single spaces
        assert p.text.count(p.question) == 1
        if system:  # a chat template keeps the system prompt as written; the line formats make it one line
            assert ("Be  brief.\nPlease." if style == "chat" else "Be brief. Please.") in p.text
            assert "Hi there" in p.text
        if style != "chat":
            assert "\n" not in p.text[p.start: p.end]
    with pytest.raises(InvalidInputError, match="empty"):
        fmt.render(" \n ")


def test_the_styles_frame_the_question(tok):
    q = "What is X?"
    assert PromptFormat("line", tok).render(q).text == "What is X?\n"
    assert PromptFormat("qa", tok).render(q).text == "Question: What is X?\nAnswer:"
    assert PromptFormat("raw", tok).render(q).text == "What is X?"
    chat = PromptFormat("chat", tok)
    text = chat.render(q).text
    assert text.endswith("<|im_start|>user\nWhat is X?<|im_end|>\n<|im_start|>assistant\n")
    assert chat.end_of_turn == "<|im_end|>" and PromptFormat("line", tok).end_of_turn == ""
    assert chat.join(text, "Paris") == text + "Paris"  # an answer follows the assistant header directly
    assert PromptFormat("qa", tok).join("Answer:", "Paris") == "Answer: Paris"
    assert PromptFormat("line", tok).join("q\n", "Paris") == "q\nParis"
    assert chat.add_special_tokens is False and PromptFormat("line", tok).add_special_tokens is True


def test_a_question_repeated_in_the_history_is_keyed_on_its_last_occurrence(tok):
    chat = PromptFormat("chat", tok)
    p = chat.render("What is X?", [Turn("What is X?", "Y")])
    assert p.start == p.text.rfind("What is X?") and p.question == "What is X?"
    line = PromptFormat("line", tok).render("What is X?", [Turn("What is X?", "Y")])
    assert line.text == "What is X?\n Y\nWhat is X?\n" and line.start == line.text.rfind("What is X?")


def test_plain_prompts_are_keyed_on_their_whole_text():
    p = Prompt.plain("  Who wrote it?\n")
    assert p.question == "Who wrote it?" and p.text == "  Who wrote it?\n"
    assert Prompt.plain("x").question == "x"


def test_clean_takes_the_answer_out_of_a_continuation(tok):
    chat, line = PromptFormat("chat", tok), PromptFormat("line", tok)
    assert chat.clean(" Canberra.<|im_end|>\n<|im_start|>user") == "Canberra."
    assert line.clean(" The answer is: Canberra\nQuestion: next") == "Canberra"
    assert line.clean("Canberra is the capital. It was founded in 1913.") == "Canberra is the capital."
    assert line.clean("A: Paris") == "Paris"
    assert one_line("a\n b\t c") == "a b c"


def test_answer_comparison_helpers():
    assert normalize("  Émile,  Zola! ") == "emile zola"
    assert contains_answer("It is São Paulo.", "sao paulo") and not contains_answer("Paulo", "Sao Paulo")
    assert not contains_answer("Parisian", "Paris") and not contains_answer("anything", "  ")
    assert repeats("Paris Paris", "Paris") and not repeats("Paris", "Paris") and not repeats("x", "")


# --- token roles --------------------------------------------------------------------------------------------------
def decode(tok, ids) -> str:
    return tok.decode(ids)


@pytest.mark.parametrize("style", STYLES)
def test_encode_splits_prompt_target_and_end_of_turn(tok, style):
    fmt = PromptFormat(style, tok)
    p = fmt.render("What is the capital of France?", HISTORY, "Be brief.")
    e = encode(tok, fmt, p, "Paris, France")
    prompt_ids = e.ids[: e.n_prompt]
    target_ids = e.ids[e.n_prompt: e.n_prompt + e.n_target]
    rest = e.ids[e.n_prompt + e.n_target:]
    assert decode(tok, target_ids).strip() == "Paris, France"
    assert decode(tok, rest) == fmt.end_of_turn  # chat: the end of turn is taught too
    assert len(e.key) == e.n_prompt and decode(tok, [i for i, k in zip(prompt_ids, e.key) if k]).strip() == p.question
    alone = encode(tok, fmt, p)  # the prompt alone: the same prompt tokens and key
    assert alone.n_target == 0 and alone.ids[: e.n_prompt] == prompt_ids
    assert alone.key[: e.n_prompt] == e.key


def test_encode_refuses_a_prompt_without_question_tokens(tok):
    fmt = PromptFormat("line", tok)
    with pytest.raises(InvalidInputError, match="no tokens"):
        encode(tok, fmt, Prompt("abc\n", 3, 3), "x")


def test_encode_prompts_left_pads_with_the_key_mask(tok):
    fmt = PromptFormat("chat", tok)
    ps = [fmt.render("Hi"), fmt.render("What is the capital of France, in a long question?")]
    b = encode_prompts(tok, fmt, ps, tok.pad_token_id)
    assert b.input_ids.shape == b.attention_mask.shape == b.key_mask.shape
    n0 = int(b.attention_mask[0].sum())
    assert b.attention_mask[0, -n0:].all() and not b.attention_mask[0, :-n0].any()  # left padded
    assert b.attention_mask[1].all()
    for row, p in enumerate(ps):
        assert decode(tok, b.input_ids[row][b.key_mask[row]].tolist()).strip() == p.question
    assert not (b.key_mask & ~b.attention_mask.bool()).any()


def test_encode_pairs_positions_labels_and_answer_mask(tok):
    fmt = PromptFormat("chat", tok)
    pairs = [(fmt.render("Hi"), "Hello there"), (fmt.render("What is the capital of France?"), "Paris")]
    b = encode_pairs(tok, fmt, pairs, tok.pad_token_id)
    for row, (p, t) in enumerate(pairs):
        e = encode(tok, fmt, p, t)
        n = len(e.ids)
        assert b.input_ids[row, :n].tolist() == e.ids and not b.attention_mask[row, n:].any()  # right padded
        assert b.target_ids[row].tolist() == e.ids[e.n_prompt: e.n_prompt + e.n_target]
        assert b.answer_mask[row].nonzero().flatten().tolist() == list(range(e.n_prompt - 1, n))
        assert decode(tok, b.input_ids[row][b.key_mask[row]].tolist()).strip() == p.question
    # each label is the next token at its position; the target labels are the targets, in order
    assert torch.equal(b.labels, b.input_ids[b.rows, b.positions + 1])
    assert torch.equal(b.labels, torch.cat(b.target_ids))
    assert torch.equal(b.train_labels, b.input_ids[b.train_rows, b.train_positions + 1])
    eot = tok("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert len(b.train_labels) == len(b.labels) + 2 * len(eot)  # the end of turn is trained, not scored
    moved = b.to("cpu")
    assert torch.equal(moved.input_ids, b.input_ids) and len(moved.target_ids) == 2
