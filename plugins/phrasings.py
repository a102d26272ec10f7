"""How the library tasks (``mixed``, ``composed``) ask their questions: a small grammar per kind.

Each kind of question has *frames* with a slot ``{w}`` and *words* that fill
it (for ``max``: "what is the {w} letter in ..." with largest, biggest,
highest, maximum), plus a few fixed phrasings (a function-call form such as
``max("{s}") =``). Every frame-word pair is a phrasing; two diagonals of the
frame x word table are held out of training, one for validation and one for
test, so a held-out phrasing is a new *combination* of a frame and a word
that training shows elsewhere: every word of it occurs in some training
phrasing of its kind. ``new_words`` keeps the phrasings that bring words no
training phrasing has ("arrange ... alphabetically"): a byte-level model
trained from scratch cannot know them, so they are measured on their own
(``held_out = "new-words"``) and never trained on.

On top of the phrasing, :func:`vary` gives every question a surface drawn
at random: a capital first letter, double or single quotes around the string,
a final "?", "." or nothing, a short prefix ("please", "Q:"), now and then a
doubled space. The string itself is always exactly the question's letters,
between its quotes.

Fields: ``{s}`` the string, ``{c}`` a letter (shown bare), ``{k}`` a position
as a digit, ``{o}`` the same position as an ordinal ("3rd").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: which phrasings a split asks: trained ones, held-out combinations (validation's or test's), or new words
TRAIN, VALIDATION, TEST, NEW_WORDS = "train", "validation", "test", "new-words"


@dataclass(frozen=True)
class Phrasings:
    """The phrasings of one kind: ``frames`` x ``words`` (two diagonals held out), ``fixed`` (trained),
    ``new_words`` (measured only)."""

    frames: tuple[str, ...]
    words: tuple[str, ...]
    fixed: tuple[str, ...] = ()
    new_words: tuple[str, ...] = ()

    def _pairs(self, diagonal: int | None) -> tuple[str, ...]:
        """Frame-word pairs with ``(i + j) % len(words) == diagonal``; ``None``: every other pair."""
        n = len(self.words)
        return tuple(frame.replace("{w}", word) for i, frame in enumerate(self.frames)
                     for j, word in enumerate(self.words)
                     if ((i + j) % n == diagonal if diagonal is not None else (i + j) % n > 1))

    @property
    def train(self) -> tuple[str, ...]:
        return self._pairs(None) + self.fixed

    @property
    def validation(self) -> tuple[str, ...]:
        """Held out of training, asked in validation only."""
        return self._pairs(0)

    @property
    def test(self) -> tuple[str, ...]:
        """Held out of training and validation, asked in test only."""
        return self._pairs(1)

    def of(self, which: str) -> tuple[str, ...]:
        """The phrasings of ``which``: :data:`TRAIN`, :data:`VALIDATION`, :data:`TEST` or :data:`NEW_WORDS`."""
        return self.new_words if which == NEW_WORDS else getattr(self, which)


#: frames several kinds share (the word decides the kind: "in alphabetical order", "from z to a")
_SEQUENCE_FRAMES = ('put the letters of "{s}" {w}', 'write "{s}" {w}', 'list the letters of "{s}" {w}',
                    'give "{s}" {w}', 'rewrite the string "{s}" {w}')
_EXTREME_FRAMES = ('what is the {w} letter in "{s}"', 'which letter of "{s}" is the {w}',
                   'find the {w} letter of "{s}"', 'give the {w} letter in "{s}"', 'name the {w} letter of "{s}"')
_HOW_MANY_FRAMES = ('how many {w} are in "{s}"', 'how many {w} does "{s}" have', 'count the {w} of "{s}"',
                    'give the number of {w} in "{s}"', 'in "{s}", how many {w} are there')

#: per kind; the new-word phrasings are the ones the first version of these tasks held out
PHRASINGS: dict[str, Phrasings] = {
    "sort": Phrasings(
        _SEQUENCE_FRAMES, ("in alphabetical order", "in order", "from a to z", "in increasing order"),
        fixed=('sort the string "{s}"', 'sort "{s}"', 'sort("{s}") ='),
        new_words=('arrange "{s}" alphabetically',)),
    "reverse": Phrasings(
        ('write "{s}" {w}', 'give "{s}" {w}', 'what is "{s}" {w}', 'print the string "{s}" {w}',
         'show the letters of "{s}" {w}'),
        ("backwards", "reversed", "in reverse order", "back to front"),
        fixed=('reverse the string "{s}"', 'reverse "{s}"', 'reverse("{s}") ='),
        new_words=('what is "{s}" spelled backwards?',)),
    "count": Phrasings(
        ('how many {w} of {c} are in "{s}"', 'how many {w} of the letter {c} does "{s}" have',
         'count the {w} of {c} in "{s}"', 'give the number of {w} of {c} in "{s}"',
         'in "{s}", how many {w} of {c} are there'),
        ("copies", "occurrences", "instances", "appearances"),
        fixed=('how many times does {c} occur in "{s}"', 'how many times does {c} appear in "{s}"',
               'count the letter {c} in "{s}"', 'count("{s}", {c}) ='),
        new_words=('how often is {c} in "{s}"?',)),
    "max": Phrasings(
        _EXTREME_FRAMES, ("largest", "biggest", "highest", "maximum"),
        fixed=('which letter of "{s}" comes last in the alphabet', 'max("{s}") ='),
        new_words=('find the greatest letter of "{s}"',)),
    "min": Phrasings(
        _EXTREME_FRAMES, ("smallest", "lowest", "minimum", "minimal"),
        fixed=('which letter of "{s}" comes first in the alphabet', 'min("{s}") ='),
        new_words=('find the least letter of "{s}"',)),
    "length": Phrasings(
        _HOW_MANY_FRAMES, ("letters", "characters", "symbols", "chars"),
        fixed=('how long is "{s}"', 'how long is the string "{s}"', 'len("{s}") ='),
        new_words=('what is the length of "{s}"?',)),
    "nth": Phrasings(
        ('what is the {o} {w} of "{s}"', 'give the {o} {w} in "{s}"', 'which {w} is {o} in "{s}"',
         'what is {w} {k} of "{s}"', 'give {w} number {k} of "{s}"', 'in "{s}", what is {w} {k}'),
        ("letter", "character", "symbol", "char"),
        fixed=('nth("{s}", {k}) =',),
        new_words=('which letter is at position {k} in "{s}"?',)),
    "distinct": Phrasings(
        _HOW_MANY_FRAMES, ("distinct letters", "different letters", "distinct characters", "different characters",
                           "separate letters"),
        fixed=('distinct("{s}") =',),
        new_words=('how many unique letters does "{s}" have?',)),
    "kth_smallest": Phrasings(
        ('what is the {o} {w} of "{s}"', 'give the {o} {w} in "{s}"', 'find the {o} {w} of "{s}"',
         'name the {o} {w} in "{s}"', 'what is the {w} number {k} of "{s}"'),
        ("smallest letter", "lowest letter", "smallest character", "lowest character"),
        fixed=('give the {o} letter of "{s}" in alphabetical order', 'kth_smallest("{s}", {k}) ='),
        new_words=('which letter is {o} when "{s}" is sorted?',)),
    "sort_descending": Phrasings(
        _SEQUENCE_FRAMES, ("in reverse alphabetical order", "from z to a", "in decreasing order",
                           "largest first"),
        fixed=('sort "{s}" in reverse alphabetical order', 'sort_desc("{s}") ='),
        new_words=('arrange "{s}" in descending order',)),
}

#: the surface a question may take: prefixes (``please`` only before a command), final marks
PREFIXES = ("", "", "please ", "Q: ")
ENDINGS = ("?", ".", "")
_QUESTION_WORDS = re.compile(r"\b(what|which|how)\b")


def words(text: str) -> set[str]:
    """The words of a phrasing, fields left out: its runs of letters, lowercased."""
    return {w.lower() for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w\}", " ", text))}


def vary(template: str, draws: Sequence[int]) -> str:
    """``template`` on a surface chosen by four non-negative integers ``draws``: quotes, ending, prefix and
    capital, doubled space. The fields stay (``format`` them afterwards): the string keeps its quotes."""
    quotes, ending, prefix, space = (int(d) for d in draws)
    call = "(" in template  # a function-call form: no prefix word, no final mark
    text = template.rstrip("?.") if not call else template
    if quotes % 2:
        text = text.replace('"{s}"', "'{s}'")
    if not call:
        text += ENDINGS[ending % len(ENDINGS)]
    chosen = PREFIXES[prefix % len(PREFIXES)]
    if chosen == "please " and (call or _QUESTION_WORDS.search(template)):
        chosen = ""
    text = chosen + text
    if (prefix // len(PREFIXES)) % 2:  # a capital first letter (the prefix's, or the phrasing's after "Q: ")
        at = 3 if chosen == "Q: " else 0
        if text[at:at + 1].isalpha():
            text = text[:at] + text[at].upper() + text[at + 1:]
    if space % 8 == 0:  # one space doubled, one time in eight
        spaces = [i for i, ch in enumerate(text) if ch == " "]
        if spaces:
            i = spaces[(space // 8) % len(spaces)]
            text = text[:i] + " " + text[i:]
    return text


def ordinal(k: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ..., ``11th``, ``21st``."""
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"
