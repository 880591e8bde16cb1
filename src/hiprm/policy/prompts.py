"""Policy prompts: the paper's two step formats, and custom ones from a config.

A `PromptStyle` is a template with `{question}` and `{previous_steps}` plus the stop strings that
end one step and the whole solution:

- `formula` (the paper's PRM/HRM search prompt): a step ends after a display or inline formula
  closed at a paragraph end, `\\]\\n\\n` or `\\)\\n\\n`; the solution ends at `# END!`.
- `step` (the paper's self-training prompt): the model writes `# Step 1`, `# Step 2`, ...; while
  step k is generated, generation stops at the header `# Step k+1` (the stop is written
  `# Step {n}` and filled with the next step number); the solution ends at `# END!`.
- `paragraph`: the formula prompt with steps ending at any blank line (`\\n\\n`), the usual
  choice for small models that rarely write `\\]`.

Both paper prompts ask for `# Answer\\n\\n<value>\\n# END!` at the end, the PRM800K answer format.
`prompt_for(question, previous)` puts everything before `{previous_steps}` in the user turn (via
the policy's `render_chat`) and the previous steps after it, so a chat model continues its own
answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

END = "# END!"

_INSTRUCTIONS = (
    "You are an expert of Math and need to solve the following question and return the answer.\n\n"
    "Question:\n{question}\n\n\n"
    "Let's analyze this step by step.\n\n"
    "{step_rule}"
    "After you finish thinking, you need to output the answer again! \n"
    "The answer should start with '# Answer', followed by two line breaks and the final response.\n"
    "Just provide the answer value without any descriptive text at the end. \n"
    "And the answer ends with '# END!'\n"
    "Below is a correct example of the expected output format:\n"
    "-----------------\n"
    "Question: 1+2+3 = ?\n\n"
    "{example}"
    "# Answer  \n\n6\n# END!\n"
    "-----------------\n"
    "{previous_steps}"
)

FORMULA_TEMPLATE = _INSTRUCTIONS.replace("{step_rule}", "").replace(
    "{example}", "Firstly, solve 1 + 2 = 3,\nThen, 3 + 3 = 6.\n\n"
)
STEP_TEMPLATE = _INSTRUCTIONS.replace(
    "{step_rule}", "Begin each step with '# Step X' to clearly indicate the entire reasoning step.\n"
).replace("{example}", "# Step 1\nsolve 1 + 2 = 3,\n\n# Step 2\nThen, 3 + 3 = 6.\n\n")
# For small instruct models that copy the example of the paper's prompt instead of solving the
# problem (Qwen2.5-Coder-0.5B-Instruct answers "6" to every question under it): the same output
# format (blank-line steps, `# Answer`, `# END!`), asked for in words, with no example to copy.
BRIEF_TEMPLATE = (
    "{question}\n\nSolve the problem step by step, one short step per paragraph, separated by blank lines. "
    "After the last step, write '# Answer' on its own line, a blank line, then only the final number, "
    "and finish with '# END!'.{previous_steps}"
)


@dataclass(frozen=True)
class PromptStyle:
    """A policy prompt and its step / solution delimiters.

    `step_stops`: strings that end a step. One containing `{n}` is a *header* (`# Step {n}`):
    it begins the next step, is filled with the next step's number during search, and splitting
    a finished solution cuts *before* it. Any other stop ends the step it closes (kept with it).
    """

    name: str
    template: str
    step_stops: tuple[str, ...]
    end_stop: str = END

    def __post_init__(self) -> None:
        for key in ("{question}", "{previous_steps}"):
            if key not in self.template:
                raise ValueError(f"prompt style {self.name!r}: template has no {key} placeholder")
        if not self.template.rstrip(" \n").endswith("{previous_steps}"):
            raise ValueError(f"prompt style {self.name!r}: {{previous_steps}} must end the template")

    def prompt_for(self, question: str, previous: str = "", render_chat: Callable[[str], str] | None = None) -> str:
        """The full prompt: instructions with the question, then the solution so far.

        >>> STYLES["formula"].prompt_for("2+2?", "We add.\\n\\n").endswith("-----------------\\nWe add.\\n\\n")
        True
        """
        head, tail = self.template.split("{previous_steps}", 1)
        # str.replace, not str.format: questions are full of LaTeX braces.
        user = head.replace("{question}", question)
        if render_chat is not None:
            user = render_chat(user)
        return user + previous + tail

    def stops_at(self, depth: int) -> list[str]:
        """Stop strings while generating the step after `depth` previous steps.

        >>> STYLES["step"].stops_at(0)
        ['# Step 2', '# END!']
        """
        stops = [s.replace("{n}", str(depth + 2)) for s in self.step_stops]
        return [*stops, self.end_stop]

    def header_pattern(self) -> re.Pattern[str] | None:
        """Regex matching any header stop (`# Step 7`), or None if the style has none."""
        headers = [s for s in self.step_stops if "{n}" in s]
        if not headers:
            return None
        return re.compile("|".join(re.escape(h).replace(re.escape("{n}"), r"\d+") for h in headers))


STYLES: dict[str, PromptStyle] = {
    "formula": PromptStyle("formula", FORMULA_TEMPLATE, ("\\]\n\n", "\\)\n\n")),
    "step": PromptStyle("step", STEP_TEMPLATE, ("# Step {n}",)),
    "paragraph": PromptStyle("paragraph", FORMULA_TEMPLATE, ("\n\n",)),
    "brief": PromptStyle("brief", BRIEF_TEMPLATE, ("\n\n",)),
}


def make_style(
    style: str = "step", template: str = "", step_stops: list[str] | None = None, end_stop: str = END
) -> PromptStyle:
    """A built-in style by name, with any of its parts replaced (a custom prompt by config).

    >>> make_style("formula", template="Q: {question}\\nA: {previous_steps}").stops_at(3)
    ['\\\\]\\n\\n', '\\\\)\\n\\n', '# END!']
    """
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; known: {', '.join(STYLES)}")
    base = STYLES[style]
    return PromptStyle(
        name=style if not (template or step_stops) else f"{style}+custom",
        template=template or base.template,
        step_stops=tuple(step_stops) if step_stops else base.step_stops,
        end_stop=end_stop or base.end_stop,
    )
