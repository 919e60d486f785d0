"""How a user's question becomes the prompt string the editor sees, and how answers are compared.

The editor is format-agnostic; the chat layer must use the SAME string for generate() and
edit(), otherwise an edit made from a chat turn would not fire on the next identical question.
All of that lives here so every skill and the CLI agree.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

STYLES = ("line", "qa", "raw", "chat")

# SmolLM2's chat template (ChatML), written out so rendering needs no tokenizer.
_CHATML = "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
# Frame words the model likes to echo before the answer ("The answer is: Paris").
_ECHO = re.compile(r"^(?:(?:the )?answer(?: is)?\s*[:\-]|a\s*:|answer\s*:)\s*", re.I)


@dataclass(frozen=True)
class PromptFormat:
    # "line" (the question, then a newline) is the default. Tried on SmolLM2-135M-Instruct:
    #  - chat template: the best answers, but its ~10 frame tokens dominate the mean-pooled
    #    fingerprint, so unrelated questions overlap 0.5-0.8 and one edit fires on all of them;
    #  - "Question: ..\nAnswer:" / "Q: ..\nA:": overlaps 0.45-0.6, still above the 0.5 threshold;
    #  - raw question: overlaps 0.2-0.4 but the model mostly answers with EOS (empty);
    #  - question + "\n": overlaps 0.2-0.42 and short answers ("The answer is: Paris").
    style: str = "line"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            from sam.errors import InvalidInputError

            raise InvalidInputError(f"unknown prompt format '{self.style}' (choose from {', '.join(STYLES)})")

    def render(self, question: str) -> str:
        q = " ".join(question.strip().split())  # one line: the frame relies on the newline
        if self.style == "raw":
            return q
        if self.style == "line":
            return q + "\n"
        if self.style == "chat":
            return _CHATML.format(q=q)
        return f"Question: {q}\nAnswer:"

    def clean(self, continuation: str) -> str:
        """The answer part of a generated continuation: its first line, without frame echoes."""
        text = continuation.replace("<|im_end|>", "\n")
        text = re.split(r"\n|Question:|<\|im_start\|>", text.strip(), maxsplit=1)[0]
        text = _ECHO.sub("", text.strip())
        # First sentence: the answer; what follows is a 135M model rambling on to the token limit.
        text = re.split(r"(?<=[a-z0-9\)\"']{2}[.!?])\s+(?=[A-Z])", text.strip(), maxsplit=1)[0]
        return text.strip()


def normalize(text: str) -> str:
    """Lowercase, accents and punctuation folded, single spaces: for answer comparison only."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def contains_answer(answer: str, expected: str) -> bool:
    """True when the expected answer appears in the model's answer as whole words."""
    a, e = normalize(answer), normalize(expected)
    if not e:
        return False
    return re.search(rf"(^|\s){re.escape(e)}($|\s)", a) is not None


def unframe(prompt: str) -> str:
    """The question inside a rendered prompt of any style (for listings)."""
    m = re.fullmatch(r"\s*Question:\s*(.*?)\s*\nAnswer:\s*", prompt, re.S)
    if m:
        return m.group(1)
    m = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S)
    if m:
        return m.group(1).strip()
    return prompt.strip()
