"""How a question (inside a conversation) becomes the prompt the model reads, and where its key is.

An edit is keyed on the user's QUESTION, not on the frame around it: the fingerprint pools the
memory layer's input over the question's tokens only, located through the tokenizer's character
offsets inside the rendered prompt. So the model's own chat template (system prompt, earlier turns)
can be the default for instruct models, and an edit made in one conversation fires when the same
question is asked in another.

Styles: `chat` (the model's chat template; the default when it has one), `line` (question and a
newline), `qa` ('Question: ...\\nAnswer:') and `raw` (the question alone), the last three for base
models. An answer follows a chat prompt directly and ends with the template's end-of-turn token,
which an edit also learns so the edited answer ends; after the other styles it follows a space.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from sam.errors import InvalidInputError

STYLES = ("chat", "line", "qa", "raw")


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt and the character span of the question inside it (the edit's key)."""

    text: str
    start: int
    end: int

    @property
    def question(self) -> str:
        return self.text[self.start: self.end]

    @staticmethod
    def plain(text: str) -> "Prompt":
        """A prompt given as a bare string: its key is the whole text, surrounding whitespace aside."""
        start = len(text) - len(text.lstrip())
        return Prompt(text, start, len(text.rstrip()))


def one_line(question: str) -> str:
    return " ".join(str(question).split())


class PromptFormat:
    """Renders questions for one model in one style."""

    def __init__(self, style: str = "auto", tokenizer=None):
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if style == "auto":
            style = "chat" if has_template else "line"
        if style not in STYLES:
            raise InvalidInputError(f"unknown prompt format '{style}' (choose from auto, {', '.join(STYLES)})")
        if style == "chat" and not has_template:
            raise InvalidInputError("prompt format 'chat' needs a model with a chat template; use line, qa or raw")
        self.style, self.tokenizer = style, tokenizer
        self.end_of_turn = self._end_of_turn() if style == "chat" else ""

    @property
    def add_special_tokens(self) -> bool:
        return self.style != "chat"  # a chat template writes its own special tokens

    def join(self, prompt: str, answer: str) -> str:
        """The prompt followed by its answer, as the model reads it (no end of turn)."""
        if self.style == "chat" or prompt[-1:].isspace():
            return prompt + answer
        return f"{prompt} {answer}"

    def render(self, question: str, history: list[Turn] | tuple = (), system: str | None = None) -> Prompt:
        q = one_line(question)
        if not q:
            raise InvalidInputError("the question is empty")
        if self.style != "chat":
            before = "".join(self._frame(one_line(t.question)) + " " + one_line(t.answer) + "\n" for t in history)
            if system:
                before = one_line(system) + "\n" + before
            framed = self._frame(q)
            start = len(before) + framed.index(q)
            return Prompt(before + framed, start, start + len(q))
        messages = [{"role": "system", "content": system}] if system else []
        for t in history:
            messages += [{"role": "user", "content": one_line(t.question)},
                         {"role": "assistant", "content": one_line(t.answer)}]
        messages.append({"role": "user", "content": q})
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        start = text.rfind(q)
        if start < 0:
            raise InvalidInputError("the chat template changed the question text; use --format line")
        return Prompt(text, start, start + len(q))

    def _frame(self, q: str) -> str:
        if self.style == "line":
            return q + "\n"
        if self.style == "qa":
            return f"Question: {q}\nAnswer:"
        return q

    def _end_of_turn(self) -> str:
        """The text a chat template writes after an assistant answer, up to its first newline."""
        probe = "sam-answer-probe"
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": probe}], tokenize=False)
        tail = text[text.rindex(probe) + len(probe):]
        return tail.split("\n")[0].strip()

    def clean(self, continuation: str) -> str:
        """The answer part of a generated continuation."""
        text = continuation
        if self.end_of_turn:
            text = text.split(self.end_of_turn)[0]
        if self.style == "chat":
            return text.strip()
        text = re.split(r"\n|Question:|<\|im_start\|>", text.strip(), maxsplit=1)[0]
        text = _ECHO.sub("", text.strip())
        # First sentence: the answer; a base-style prompt lets a 135M model ramble on to the token limit.
        text = re.split(r"(?<=[a-z0-9\)\"']{2}[.!?])\s+(?=[A-Z])", text.strip(), maxsplit=1)[0]
        return text.strip()


# Frame words the model likes to echo before the answer ("The answer is: Paris").
_ECHO = re.compile(r"^(?:(?:the )?answer(?: is)?\s*[:\-]|a\s*:|answer\s*:)\s*", re.I)


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


def repeats(answer: str, expected: str) -> bool:
    """True when the expected answer appears more than once (an answer that runs on into the target again)."""
    a, e = normalize(answer).replace(" ", ""), normalize(expected).replace(" ", "")
    return bool(e) and a.count(e) > 1
