import random

import noise
from spelling import Speller, edits1, whole_words, word_counts

TRAIN = ["wake me up at seven", "what is the weather like", "whether or not", "play some jazz", "play the weather song"]


def test_word_counts_lower_cases_and_splits_on_non_letters():
    assert word_counts(["Play jazz, play!", "what's up"]) == {"play": 2, "jazz": 1, "what": 1, "s": 1, "up": 1}


def test_edits1_covers_the_typos_noise_makes():
    rng = random.Random(0)
    for _ in range(200):
        word = rng.choice(["weather", "seven", "jazz", "alarm"])
        typed = noise.typo(word, rng)
        assert typed == word or word in edits1(typed)  # a swap of two equal letters changes nothing
    assert "weather" in edits1("waether") and "weather" in edits1("wether") and "jazz" in edits1("jaz")


def test_corrects_to_the_most_frequent_neighbour_and_keeps_known_words():
    speller = Speller.from_texts(TRAIN)
    assert speller("wake me up at sevn") == "wake me up at seven"
    assert speller("WHAT IS THE WAETHER?") == "WHAT IS THE weather?"  # unknown words only; punctuation stays
    assert speller("wether") == "weather"  # 'weather' (2) beats 'whether' (1), both one edit away
    assert speller("play jaz  some") == "play jazz  some"  # spacing is kept
    assert speller("play xyzzy by abba at 7pm") == "play xyzzy by abba at 7pm"  # no neighbour, short, digits
    assert Speller.from_texts(TRAIN, keep=["Jaz"])("play jaz") == "play jaz"  # words the tokenizer knows stay


def test_whole_words_are_the_vocabulary_without_pieces_or_special_tokens():
    class Tok:
        def get_vocab(self):
            return {"[CLS]": 0, "play": 1, "##ing": 2, "jazz": 3, "7": 4}

    assert sorted(whole_words(Tok())) == ["jazz", "play"]
