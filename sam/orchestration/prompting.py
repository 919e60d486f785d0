"""How a user's question becomes the prompt string the editor sees, and how answers are compared.

The editor is format-agnostic; the chat layer must use the SAME string for generate() and
edit(), otherwise an edit made from a chat turn would not fire on the next identical question.
All of that lives here so every skill and the CLI agree.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

STYLES = ("qa", "raw", "chat")

# SmolLM2's chat template (ChatML), written out so rendering needs no tokenizer.
_CHATML = "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class PromptFormat:
    style: str = "qa"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            from sam.errors import InvalidInputError

            raise InvalidInputError(f"unknown prompt format '{self.style}' (choose from {', '.join(STYLES)})")

    def render(self, question: str) -> str:
        q = " ".join(question.strip().split())  # one line: the frame relies on the newline
        if self.style == "raw":
            return q
        if self.style == "chat":
            return _CHATML.format(q=q)
        return f"Question: {q}\nAnswer:"

    def clean(self, continuation: str) -> str:
        """The answer part of a generated continuation: its first line, without frame echoes."""
        text = continuation.replace("<|im_end|>", "\n")
        text = re.split(r"\n|Question:|<\|im_start\|>", text.strip(), maxsplit=1)[0]
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
