"""FeedbackHandler: a user's reply to an answer -> a correction, or nothing to edit.

The rules are deliberately conservative: an edit changes the model for good, so a reply only
counts as a factual correction when it both rejects/corrects (a marker such as "no", "actually",
"it should be", "the answer is") and carries a short answer that is not a stock phrase
("no idea", "thanks", "never mind") or a style wish ("shorter", "in French").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sam.core.prompts import contains_answer, normalize
from sam.orchestration.skill import BaseSkill
from sam.orchestration.uif import SAM_UIF

EDIT_KINDS = ("factual_correction", "remember")
MAX_ANSWER_WORDS = 12

_DASH = r"[\s,.!:;\u2014\u2013-]*"
_REJECT = (r"wrong answer|incorrect answer|no+|nope|nah|wrong|incorrect|false|not quite|not really|not true|"
           r"that'?s (?:not (?:right|correct|true|it)|wrong|incorrect|false)|"
           r"that is (?:not (?:right|correct|true|it)|wrong|incorrect|false)|"
           r"(?:you'?re|you are) wrong|"
           r"(?:this|that|your answer) is (?:wrong|incorrect|not right)")
_STRONG = [  # (pattern, confidence): markers that name the right answer outright
    (r"^(?:no+|actually|wrong|well)?{d}(?:the )?(?:correct|right|real|actual|true|proper) answer (?:is|was|would be|should be|=){d}(?P<a>.+)$", 0.95),
    (r"^(?:no+,? )?(?:it|the answer|that|this|you|that answer) (?:should|must|ought to) (?:be|have been|say|have said|read)\b{d}(?P<a>.+)$", 0.9),
    (r"^(?:you )?should(?:'ve| have) said{d}(?P<a>.+)$", 0.9),
    (r"^(?:correction|fix|fixed)\s*:{d}(?P<a>.+)$", 0.95),
    (r"^actually{d}(?P<a>.+)$", 0.8),
    (r"^(?:the )?answer (?:is|was){d}(?P<a>.+)$", 0.85),
    (r"^(?:it'?s|it is|its) actually{d}(?P<a>.+)$", 0.9),
    (r"^(?!.*\b(?:is|are|was|were|that'?s|it'?s|do|does|did)\s+not\b)(?P<a>[^,]+?),? (?:and )?not (?P<old>[^,]+?)[.!]*$", 0.7),
    (r"^not (?P<old>[^,]+?),\s*(?P<a>.+)$", 0.7),
]
_STRONG = [(re.compile(p.format(d=_DASH), re.I), c) for p, c in _STRONG]
_REJECTION = re.compile(rf"^(?:{_REJECT})\b{_DASH}(?P<a>.*)$", re.I)
_ITS = re.compile(rf"^(?:it'?s|it is|its|that'?s|that is){_DASH}(?P<a>.+)$", re.I)
_REMEMBER = re.compile(r"^(?:please\s+)?(?:remember|note|memori[sz]e|keep in mind|don'?t forget)"
                       r"(?:\s+that|\s*:|\s*,)?\s*(?P<fact>.+)$", re.I)
_CLARIFY = re.compile(r"^(?:no,?\s+)?(?:i meant|i mean|what i meant(?: was)?|i was (?:asking|talking) about|"
                      r"i(?:'m| am) asking about|to clarify|let me rephrase|i was referring to)\b[\s,:]*(?P<q>.*)$", re.I)
_PREFERENCE = re.compile(
    r"^(?:please\s+)?(?:i(?:'d| would)? (?:prefer|like|want)|i(?:'d| would) rather|from now on|in (?:the )?future|"
    r"(?:can|could|would) you (?:please )?(?:be|answer|reply|respond|make|keep|use|write|give|explain|stop)|"
    r"(?:be|answer|reply|respond|write|keep it|make it|use|give me|talk|speak|stop)\b)", re.I)
_STYLE_WORDS = re.compile(
    r"\b(?:shorter|longer|brief(?:er)?|concise|verbose|detail(?:ed|s)?|simpler|simple|formal|informal|casual|"
    r"polite|friendl(?:y|ier)|bullet|points?|list|paragraphs?|emojis?|tone|style|words|sentences?|format|"
    r"english|french|german|spanish|italian|chinese|japanese)\b", re.I)
_UNCERTAIN = re.compile(r"\b(?:no idea|no clue|not sure|unsure|dunno|i don'?t know|idk|beats me|who knows|"
                        r"can'?t remember|don'?t remember|not certain|i forget)\b", re.I)
_ACK = re.compile(r"^(?:thanks?|thank you|thx|ty|cheers|great|cool|ok(?:ay)?|k|nice|perfect|awesome|good|"
                  r"yes|yep|yeah|yup|sure|correct|right|exactly|indeed|true|fine|lol|haha|wow|hmm+|"
                  r"that'?s (?:right|correct|true|it|great|good|fine|perfect)|you'?re right|spot on|"
                  r"no (?:problem|worries)|no,? thanks?(?: you)?|not bad|got it|i see|makes sense)\b", re.I)
_QUESTION_START = re.compile(r"^(?:what|who|whom|whose|which|when|where|why|how|is|are|was|were|do|does|did|"
                             r"can|could|would|will|should|shall|may|might|have|has|tell me|explain|define|"
                             r"name|list|give me)\b", re.I)
# Answers that are really stock phrases: never edit the model to say these.
_NOT_ANSWERS = {"", "it", "that", "this", "so", "not", "nothing", "none", "never mind", "nevermind", "forget it",
                "whatever", "thanks", "thank you", "no", "yes", "ok", "okay", "fine", "right", "correct", "true",
                "false", "wrong", "incorrect", "sure", "problem", "worries", "no problem", "idea", "sorry",
                "good", "great", "cool", "wait", "hmm", "not sure", "dunno", "i guess", "maybe", "perhaps",
                "the same", "something else", "different", "a question", "another question"}
_LEADING = re.compile(r"^(?:(?:actually|well|so|but|oh|um+|uh+|it'?s|it is|its|it was|that'?s|that is|"
                      r"the (?:correct |right |real |actual )?answer (?:is|was|should be)|should be|"
                      r"it should be|i think|i believe|obviously|of course|clearly)\b[\s,:;\u2014\u2013-]*)+", re.I)
_TRAILING = re.compile(r"(?:[\s,;]+(?:actually|instead|though|obviously|of course|silly|dummy|lol|please|"
                       r"you know|i think|i believe|not (?:the )?[\w' -]+?|rather than [\w' -]+?))+$", re.I)
_COPULA = re.compile(r"\s(?:is|are|was|were)\s", re.I)


@dataclass(frozen=True)
class Feedback:
    kind: str  # factual_correction | remember | preference | clarification | rejection |
    #            confirmation | uncertain | question | other
    answer: str | None = None  # the corrected answer, for factual_correction / remember
    subject: str | None = None  # remember: what the fact is about ("my dog's name")
    confidence: float = 0.0
    detail: str = ""

    @property
    def wants_edit(self) -> bool:
        return self.kind in EDIT_KINDS and bool(self.answer)


def _clean(candidate: str, question: str | None = None) -> str:
    text = candidate.strip().strip("\"'`\u201c\u201d\u2018\u2019 ")
    text = re.split(r"(?<=\w)[.!]+(?:\s|$)", text, maxsplit=1)[0]  # first sentence only
    text = _LEADING.sub("", text).strip()
    text = _TRAILING.sub("", text).strip()
    if _COPULA.search(f" {text} ") and len(text.split()) > 3:
        head, tail = _split_copula(text)
        text = _pick_side(head, tail, question)
    return text.strip().strip("\"'`\u201c\u201d\u2018\u2019.,!;: ")


def _split_copula(text: str) -> tuple[str, str]:
    parts = _COPULA.split(f" {text} ")
    return " ".join(parts[:-1]).strip(), parts[-1].strip()


def _pick_side(head: str, tail: str, question: str | None) -> str:
    """'the capital of Australia is Canberra' -> 'Canberra': keep the side the question lacks."""
    if question:
        q = set(normalize(question).split())
        h, t = set(normalize(head).split()), set(normalize(tail).split())
        if len(t & q) > len(h & q):
            return head
    return tail


def _valid_answer(text: str) -> bool:
    n = normalize(text)
    if n in _NOT_ANSWERS or not n:
        return False
    if text.rstrip().endswith("?") or len(n.split()) > MAX_ANSWER_WORDS:
        return False
    if re.match(r"^(?:i|i'm|im|you|we|let|please|can|could|would|what|why|how)\b", n):
        return False
    if _UNCERTAIN.search(text):
        return False
    return True


def classify_feedback(text: str, previous_answer: str | None = None, question: str | None = None) -> Feedback:
    """Classify a reply to an answer; extract the corrected answer when it is a correction."""
    t = " ".join((text or "").split())
    if not t:
        return Feedback("other", detail="empty reply")

    m = _REMEMBER.match(t)
    if m:
        fact = m.group("fact").strip().rstrip(".!")
        if _COPULA.search(f" {fact} "):
            subject, answer = _split_copula(fact)
            if subject and _valid_answer(answer):
                return Feedback("remember", answer=answer.strip(), subject=subject, confidence=0.9)
        return Feedback("remember", confidence=0.5, detail="cannot read a fact from it: use 'remember: <thing> is <value>'")

    m = _CLARIFY.match(t)
    if m:
        return Feedback("clarification", subject=m.group("q").strip() or None, confidence=0.8)

    if _UNCERTAIN.search(t) and not re.search(r"answer (?:is|was)|should be", t, re.I):
        return Feedback("uncertain", confidence=0.9)

    for pattern, confidence in _STRONG:
        m = pattern.match(t)
        if m:
            return _as_correction(m.group("a"), confidence, previous_answer, question, t)

    if _PREFERENCE.match(t):
        return Feedback("preference", detail=t, confidence=0.8)

    m = _REJECTION.match(t)
    if m:
        rest = m.group("a").strip()
        if not rest or normalize(rest) in _NOT_ANSWERS or _ACK.match(rest):
            # "No thanks", "Wrong." : either politeness or a rejection that names no answer.
            if re.match(r"^no,?\s*(?:thanks?|thank you|problem|worries)", t, re.I):
                return Feedback("confirmation", confidence=0.7)
            return Feedback("rejection", confidence=0.8, detail="says the answer is wrong but gives no answer")
        return _as_correction(rest, 0.8, previous_answer, question, t, rejection=True)

    if _ACK.match(t):
        return Feedback("confirmation", confidence=0.8)
    if t.endswith("?") or _QUESTION_START.match(t):
        return Feedback("question", confidence=0.8)

    m = _ITS.match(t)
    if m:
        return _as_correction(m.group("a"), 0.6, previous_answer, question, t)
    return Feedback("other", confidence=0.5)


def _as_correction(raw: str, confidence: float, previous_answer: str | None, question: str | None,
                   text: str, rejection: bool = False) -> Feedback:
    if _STYLE_WORDS.search(raw) and (_PREFERENCE.match(raw) or re.match(r"^(?:more|less|a bit|much|shorter|longer|in )", raw.strip(), re.I)):
        return Feedback("preference", detail=text, confidence=0.7)
    answer = _clean(raw, question)
    if raw.strip().endswith("?") and not rejection:
        return Feedback("question", confidence=0.6)
    if not _valid_answer(answer):
        if rejection:
            return Feedback("rejection", confidence=0.6, detail="says the answer is wrong but gives no usable answer")
        return Feedback("other", confidence=0.4, detail=f"no usable answer in '{raw.strip()}'")
    if previous_answer and contains_answer(previous_answer, answer) and not rejection:
        return Feedback("confirmation", answer=answer, confidence=0.6, detail="the answer already says this")
    return Feedback("factual_correction", answer=answer, confidence=confidence)


def fact_question(subject: str) -> str:
    """'my dog's name' -> "What is my dog's name?": the question a remembered fact answers."""
    s = subject.strip().rstrip("?.")
    return f"What {'are' if re.search(r's$', s.split()[-1]) and not re.search(r'(?:name|ss)$', s) else 'is'} {s}?"


class FeedbackHandler(BaseSkill):
    name = "feedback_handler"
    description = "Classify a reply to an answer; a factual correction becomes an edit request."
    required_inputs = ("feedback",)
    optional_inputs = ("previous_answer", "question", "history")
    output_keys = ("feedback_kind", "feedback_summary")

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        question = uif.get("question") or uif.input_query or None
        fb = classify_feedback(uif.get("feedback"), uif.get("previous_answer"), question)
        uif.put(self.name, feedback_kind=fb.kind, feedback_summary=self._summary(fb),
                feedback_confidence=fb.confidence)
        if fb.kind == "factual_correction":
            if not question:
                uif.fail("a correction needs the question it corrects (ask one first)", self.name)
                return uif
            uif.put(self.name, edit_question=question, correct_answer=fb.answer, confidence_score=fb.confidence,
                    edit_context=uif.get("feedback"), edit_source="feedback", edit_history=uif.get("history"))
            uif.pending_goals = [*uif.pending_goals, "correct"]
        elif fb.kind == "remember" and fb.answer:
            q = fact_question(fb.subject)
            uif.put(self.name, question=q, edit_question=q, correct_answer=fb.answer, confidence_score=fb.confidence,
                    edit_context=uif.get("feedback"), edit_source="remember")
            uif.pending_goals = [*uif.pending_goals, "correct"]
        else:
            if fb.kind == "clarification" and fb.subject:
                # "I meant the capital of Austria" -> ask "What is the capital of Austria?"
                q = fb.subject if fb.subject.endswith("?") else fact_question(fb.subject)
                uif.put(self.name, clarified_question=q)
            uif.final_response = self._summary(fb)
        return uif

    @staticmethod
    def _summary(fb: Feedback) -> str:
        if fb.kind == "factual_correction":
            return f"correction: the answer is '{fb.answer}'"
        if fb.kind == "remember":
            return f"remember: {fb.subject} is '{fb.answer}'" if fb.answer else f"remember: {fb.detail}"
        messages = {
            "preference": "a preference, not a fact: nothing to edit",
            "clarification": "a clarification: ask the clarified question",
            "rejection": "says the answer is wrong but not what is right: use /correct ANSWER",
            "confirmation": "a confirmation: nothing to edit",
            "uncertain": "no answer given: nothing to edit",
            "question": "a new question, not a correction",
            "other": "not a correction: nothing to edit",
        }
        return messages[fb.kind] + (f" ({fb.detail})" if fb.detail and fb.kind != "preference" else "")
