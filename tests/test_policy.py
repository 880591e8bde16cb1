"""Policy interface, prompts, step splitting and the scripted fake (no model, no network)."""

from __future__ import annotations

import pytest

from hiprm.policy.prompts import STYLES, PromptStyle, make_style
from hiprm.policy.protocol import SamplingParams, cut_at_stop
from hiprm.policy.scripted import ScriptedPolicy
from hiprm.policy.steps import final_answer, is_final, solution_text, split_solution, step_texts

STEP_SOLUTION = (
    "# Step 1\nJanet has 16 eggs and uses 3 + 4 = 7.\n\n"
    "# Step 2\nShe sells 16 - 7 = 9 eggs.\n\n"
    "# Step 3\n9 * 2 = 18 dollars.\n\n"
    "# Answer\n\n18\n# END!"
)
FORMULA_SOLUTION = (
    "Eggs used: \\[3 + 4 = 7\\]\n\n"
    "Eggs sold: \\(16 - 7 = 9\\)\n\n"
    "Money: \\[9 \\cdot 2 = 18\\]\n\n"
    "# Answer\n\n18\n# END!"
)


# ---- stop strings ---------------------------------------------------------------------------


def test_cut_at_stop_keeps_or_drops_the_earliest_stop():
    text = "a \\]\n\nb # END! c"
    assert cut_at_stop(text, ["# END!", "\\]\n\n"], True) == ("a \\]\n\n", "\\]\n\n")
    assert cut_at_stop(text, ["# END!", "\\]\n\n"], False) == ("a ", "\\]\n\n")
    assert cut_at_stop(text, [], True) == (text, None)
    # same start: the longer stop wins, so "\n\n# Step" is not cut as "\n\n"
    assert cut_at_stop("x\n\n# Step 2 y", ["\n\n", "\n\n# Step 2"], True) == ("x\n\n# Step 2", "\n\n# Step 2")


@pytest.mark.parametrize("bad", [dict(n=0), dict(max_tokens=0), dict(top_p=0.0), dict(temperature=-1.0)])
def test_sampling_params_reject_nonsense(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


# ---- prompts --------------------------------------------------------------------------------


def test_paper_prompts_carry_their_format_instructions():
    formula, step = STYLES["formula"].template, STYLES["step"].template
    for t in (formula, step):
        assert t.startswith("You are an expert of Math and need to solve the following question")
        assert "The answer should start with '# Answer', followed by two line breaks" in t
        assert "And the answer ends with '# END!'" in t
        assert t.endswith("-----------------\n{previous_steps}")
    assert "Begin each step with '# Step X'" in step and "Begin each step" not in formula
    assert "# Step 1\nsolve 1 + 2 = 3,\n\n# Step 2\nThen, 3 + 3 = 6." in step
    assert "Firstly, solve 1 + 2 = 3,\nThen, 3 + 3 = 6." in formula


def test_prompt_for_keeps_latex_braces_and_puts_previous_steps_after_the_chat_turn():
    q = "Find $\\frac{1}{2} + {x}$ when {previous_steps} appears in a question."
    p = STYLES["formula"].prompt_for(q, "Step A\\]\n\n", render_chat=lambda u: f"<user>{u}</user><assistant>")
    assert q in p
    assert p.startswith("<user>You are an expert")
    assert p.endswith("-----------------\n</user><assistant>Step A\\]\n\n")


def test_stops_at_names_the_next_step_header():
    assert STYLES["step"].stops_at(0) == ["# Step 2", "# END!"]
    assert STYLES["step"].stops_at(4) == ["# Step 6", "# END!"]
    assert STYLES["formula"].stops_at(7) == ["\\]\n\n", "\\)\n\n", "# END!"]
    assert STYLES["paragraph"].stops_at(0) == ["\n\n", "# END!"]


def test_custom_prompt_by_config_and_its_errors():
    s = make_style("paragraph", template="Solve: {question}\n{previous_steps}", step_stops=["\n"], end_stop="<end>")
    assert s.prompt_for("1+1", "two") == "Solve: 1+1\ntwo"
    assert s.stops_at(0) == ["\n", "<end>"]
    with pytest.raises(ValueError, match="no \\{question\\}"):
        make_style("step", template="{previous_steps}")
    with pytest.raises(ValueError, match="must end the template"):
        make_style("step", template="{question} {previous_steps} and more")
    with pytest.raises(ValueError, match="unknown prompt style"):
        make_style("nope")


# ---- steps ----------------------------------------------------------------------------------


def test_split_solution_step_headers_keep_answer_with_last_step():
    steps = split_solution(STEP_SOLUTION, STYLES["step"])
    assert steps == [
        "# Step 1\nJanet has 16 eggs and uses 3 + 4 = 7.",
        "# Step 2\nShe sells 16 - 7 = 9 eggs.",
        "# Step 3\n9 * 2 = 18 dollars.\n\n# Answer\n\n18",
    ]


def test_split_solution_formula_steps():
    steps = split_solution(FORMULA_SOLUTION, STYLES["formula"])
    assert steps == [
        "Eggs used: \\[3 + 4 = 7\\]",
        "Eggs sold: \\(16 - 7 = 9\\)",
        "Money: \\[9 \\cdot 2 = 18\\]",
        "# Answer\n\n18",
    ]
    assert split_solution("no delimiters at all", STYLES["formula"]) == ["no delimiters at all"]
    assert split_solution("# Answer\n\n4\n# END!", STYLES["formula"]) == ["# Answer\n\n4"]
    assert split_solution("", STYLES["formula"]) == []


def _chunks(text: str, style: PromptStyle) -> list[str]:
    """Cut a solution the way step-level search does: generate to the next stop, keep it."""
    out, depth = [], 0
    while text:
        chunk, _ = cut_at_stop(text, style.stops_at(depth), True)
        out.append(chunk)
        text = text[len(chunk) :]
        depth += 1
    return out


@pytest.mark.parametrize("style,text,n", [("step", STEP_SOLUTION, 3), ("formula", FORMULA_SOLUTION, 4)])
def test_step_texts_of_search_chunks_equal_the_split_of_the_whole_text(style, text, n):
    """The reward model sees the same steps whether a solution came whole or step by step."""
    s = STYLES[style]
    chunks = _chunks(text, s)
    assert len(chunks) == n
    assert "".join(chunks) == text
    assert step_texts(chunks, s) == split_solution(text, s)


def test_step_chunk_ends_with_the_next_header_which_moves_to_the_next_step():
    s = STYLES["step"]
    chunks = _chunks(STEP_SOLUTION, s)
    assert chunks[0].endswith("# Step 2")
    assert step_texts(chunks[:1], s) == ["# Step 1\nJanet has 16 eggs and uses 3 + 4 = 7."]
    assert step_texts(chunks[:2], s)[1].startswith("# Step 2\nShe sells")


def test_is_final_and_final_answer():
    s = STYLES["step"]
    chunks = _chunks(STEP_SOLUTION, s)
    assert [is_final(c, s) for c in chunks] == [False, False, True]
    assert is_final("anything # END!", s)
    # mentioning an answer does not end a solution; only the style's answer or end marker does
    for chunk in ["To see what the answer is, first compute 2+3.", "The answer is not 4, since 2+3=5.",
                  "An intermediate \\boxed{5} here.", "So the answer is 5."]:  # fmt: skip
        for style in STYLES.values():
            assert not is_final(chunk, style), (chunk, style.name)
    assert final_answer(STEP_SOLUTION, s) == "18"
    assert final_answer("# Step 1\nno answer yet", s) is None
    assert solution_text("a # END! b", s) == "a "


# ---- scripted policy ------------------------------------------------------------------------


def test_scripted_policy_is_deterministic_and_applies_stops():
    pol = ScriptedPolicy({"eggs": [STEP_SOLUTION, STEP_SOLUTION.replace("18", "20")]})
    params = SamplingParams(n=6, stop=["# Step 2", "# END!"], seed=3)
    a = pol.generate(["how many eggs?"], params)[0]
    assert a == pol.generate(["how many eggs?"], params)[0]
    assert all(t == "# Step 1\nJanet has 16 eggs and uses 3 + 4 = 7.\n\n# Step 2" for t in a)
    whole = pol.generate(["eggs"], SamplingParams(n=16, stop=["# END!"], seed=1))[0]
    assert {final_answer(t, STYLES["step"]) for t in whole} == {"18", "20"}  # both texts get used
    dropped = pol.generate(["eggs"], SamplingParams(n=1, stop=["# END!"], include_stop=False))[0][0]
    assert dropped.endswith("\n") and "# END!" not in dropped


def test_scripted_policy_continues_the_text_the_prompt_ends_with():
    a = "# Step 1\nx = 1\n\n# Step 2\ny = 2\n\n# Answer\n\n3\n# END!"
    b = "# Step 1\nx = 5\n\n# Step 2\ny = 6\n\n# Answer\n\n11\n# END!"
    pol = ScriptedPolicy({"Q:": [a, b]})
    prompt = "Q: solve\n" + "# Step 1\nx = 5\n\n# Step 2"
    out = pol.generate([prompt], SamplingParams(n=4, stop=["# Step 3", "# END!"]))[0]
    assert out == ["\ny = 6\n\n# Answer\n\n11\n# END!"] * 4


def test_scripted_policy_queue_max_tokens_and_missing_rule():
    pol = ScriptedPolicy(queue=["one two three four", "five"])
    assert pol.generate(["x", "y"], SamplingParams(n=1, max_tokens=2)) == [["one two"], ["five"]]
    assert pol.count_tokens("one two three") == 3
    with pytest.raises(KeyError, match="no rule matches"):
        ScriptedPolicy({"a": ["t"]}).generate(["zzz"], SamplingParams())


def test_every_backend_declares_the_whole_policy_protocol(tiny_lm_dir):
    """Callers use `concurrent` and `close()` without probing: each backend has every member."""
    import typing

    import httpx

    from hiprm.policy.hf import HFPolicy
    from hiprm.policy.openai_http import OpenAIPolicy
    from hiprm.policy.protocol import Policy
    from hiprm.policy.scripted import ScriptedPolicy

    members = set(typing.get_type_hints(Policy)) | {n for n in vars(Policy) if not n.startswith("_")}
    assert {"generate", "render_chat", "count_tokens", "close", "concurrent"} <= members
    backends = {
        "hf": HFPolicy(str(tiny_lm_dir)),
        "openai": OpenAIPolicy(transport=httpx.MockTransport(lambda r: httpx.Response(500))),
        "scripted": ScriptedPolicy({"q": ["a"]}),
    }
    for name, policy in backends.items():
        missing = [m for m in members if not hasattr(policy, m)]
        assert not missing, f"{name} lacks {missing}"
        assert isinstance(policy.concurrent, bool)
        policy.close()
    assert backends["openai"].concurrent and not backends["hf"].concurrent


def test_samples_carry_the_tokens_the_backend_generated(tiny_lm_dir):
    """The hf decoder's own count, a server's `usage` when the request returned one sample, and
    None (so callers count the text) when one `usage` covers several samples."""
    import json

    import httpx

    from hiprm.policy.hf import HFPolicy
    from hiprm.policy.openai_http import OpenAIPolicy
    from hiprm.policy.protocol import Sample, generated_tokens

    hf = HFPolicy(str(tiny_lm_dir))
    before = hf.tokens_generated
    (samples,) = hf.generate(["Question: 1+1?\n"], SamplingParams(n=3, max_tokens=5, temperature=0.7, seed=1))
    assert all(isinstance(s, Sample) and 1 <= s.tokens <= 5 for s in samples)
    assert sum(s.tokens for s in samples) == hf.tokens_generated - before

    def server(request: httpx.Request) -> httpx.Response:
        n = json.loads(request.content)["n"]
        choices = [{"index": i, "text": f"step {i}", "finish_reason": "length"} for i in range(n)]
        return httpx.Response(200, json={"choices": choices, "usage": {"completion_tokens": 7 * n}})

    api = OpenAIPolicy(transport=httpx.MockTransport(server))
    (one,) = api.generate(["q"], SamplingParams(n=1, max_tokens=8))
    assert one[0].tokens == 7 and generated_tokens(api, one[0]) == 7
    (two,) = api.generate(["q"], SamplingParams(n=2, max_tokens=8))
    assert [s.tokens for s in two] == [None, None]  # one usage for both: counted from the text
    assert generated_tokens(api, two[0]) == api.count_tokens("step 0")
    (scripted,) = ScriptedPolicy({"q": ["a b c"]}).generate(["q"], SamplingParams(n=1))
    assert scripted[0].tokens == 3
