"""The one step formatter: exact paper layout, round trips, and fitting to a token budget
(oldest previous steps dropped first; question and current step cut only as a last resort,
and then counted)."""

from __future__ import annotations

import pytest

from hiprm.rm.template import TemplateConfig, parse, render, render_fitted


def test_first_step_has_no_previous_block():
    text = render("What is 1+1?", [], "1+1=2")
    assert text == (
        "Question:\nWhat is 1+1?\n\nLet's break it down step by step!\n\n"
        "Now, let's focus on the current step:\n1+1=2"
    )


def test_previous_steps_joined_by_separator():
    text = render("Q", ["a", "b"], "c")
    assert "Previous reasoning:\na\n\nb\n\nNow, let's focus on the current step:\nc" in text
    assert render("Q", ["a", "b"], "c", TemplateConfig(step_separator="\n")).count("a\nb\n\n") == 1


@pytest.mark.parametrize(
    "question, previous, current",
    [
        ("Q", [], "c"),
        ("Find $x$ if $x^2=4$.\n\nExplain.", ["Let x = 2.", "Check: 4 = 4."], "So x = 2.\n\n# Answer\n\n2"),
        ("Multi\nline", ["step one", "step\ntwo"], "last"),
    ],
)
def test_round_trip(question, previous, current):
    assert parse(render(question, previous, current)) == (question, previous, current)


def test_parse_rejects_foreign_text():
    with pytest.raises(ValueError):
        parse("not a template")


def test_fit_drops_oldest_steps_first(tiny_tokenizer):
    steps = [f"step number {i} with some words in it" for i in range(30)]
    cfg = TemplateConfig(max_length=120)
    text, rep = render_fitted(tiny_tokenizer, "What is 2 + 3?", steps, "The answer is 5.", cfg)
    assert len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]) <= 118
    assert rep.dropped_steps > 0 and not rep.truncated
    q, prev, cur = parse(text)
    assert q == "What is 2 + 3?" and cur == "The answer is 5."
    assert prev == steps[rep.dropped_steps :]  # the newest steps are the ones kept


def test_fit_leaves_short_inputs_alone(tiny_tokenizer):
    text, rep = render_fitted(tiny_tokenizer, "Q?", ["a"], "b", TemplateConfig(max_length=512))
    assert text == render("Q?", ["a"], "b") and rep.dropped_steps == 0 and not rep.truncated


def test_fit_cuts_question_then_current_step_and_counts(tiny_tokenizer):
    long_q = "What is 2 + 3? " * 80
    long_c = "First, 2 + 3 = 5. " * 80
    cfg = TemplateConfig(max_length=100)
    text, rep = render_fitted(tiny_tokenizer, long_q, ["old"], long_c, cfg)
    assert len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"]) <= 98 + 2  # decode/re-encode slack
    assert rep.dropped_steps == 1 and rep.cut_question_tokens > 0 and rep.truncated
    q, prev, cur = parse(text)
    assert prev == [] and long_q.startswith(q[:20]) and long_c.startswith(cur[:20])
