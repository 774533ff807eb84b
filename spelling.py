"""Spelling correction against the training vocabulary (Norvig's corrector), for predict and serve (--spelling).

One misspelled word costs the fine-tuned encoder about 10 points of accuracy:
WordPiece cuts it into pieces the model rarely saw. A word the training
utterances never used is replaced by the most frequent training word one edit
away (a letter dropped, inserted, replaced, or two swapped). Words the model
knows (from training or as one token of its vocabulary), short words, and
words with no such neighbour are left alone.

    speller = Speller.from_texts(train_texts, whole_words(tokenizer))  # a checkpoint saves its words.json
    speller("wake me up at sevn")                                      # 'wake me up at seven'
"""
import collections
import functools
import re
import string

WORD = re.compile(r"[^\W\d_]+")  # runs of letters: digits, apostrophes and punctuation split words
MIN_LENGTH = 3  # shorter words have too many neighbours one edit away


def word_counts(texts):
    """{lower-case word: count} over texts, most frequent first."""
    return dict(collections.Counter(w.lower() for t in texts for w in WORD.findall(t)).most_common())


def whole_words(tokenizer):
    """The words a WordPiece tokenizer keeps as one token (no '##' pieces, no special tokens)."""
    return [w for w in tokenizer.get_vocab() if w.isalpha()]


def edits1(word):
    """Every string one edit from word (lower-case ASCII letters)."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    deletes = [a + b[1:] for a, b in splits if b]
    swaps = [a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1]
    replaces = [a + c + b[1:] for a, b in splits if b for c in string.ascii_lowercase]
    inserts = [a + c + b for a, b in splits for c in string.ascii_lowercase]
    return set(deletes + swaps + replaces + inserts)


class Speller:
    """counts: {training word: count}; keep: more words to leave alone, e.g. the whole words of the tokenizer's
    vocabulary, which the encoder knows even when fine-tuning never showed them."""

    def __init__(self, counts, keep=()):
        self.counts = counts
        self.keep = frozenset(w.lower() for w in keep)  # a cased vocabulary keeps 'Paris' for 'paris' too
        self.nearest = functools.lru_cache(maxsize=2 ** 16)(self._nearest)  # a server sees the same typos again

    @classmethod
    def from_texts(cls, texts, keep=()):
        return cls(word_counts(texts), keep)

    def word(self, w):
        """The training word for w (lower-case), or w itself when it is known, short or has no neighbour."""
        lower = w.lower()
        if lower in self.counts or lower in self.keep or len(lower) < MIN_LENGTH:
            return w
        return self.nearest(lower) or w

    def _nearest(self, word):
        known = sorted(c for c in edits1(word) if c in self.counts)  # sorted: ties go the same way every time
        return max(known, key=self.counts.get) if known else None

    def __call__(self, text):
        return WORD.sub(lambda m: self.word(m.group()), text)
