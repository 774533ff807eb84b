"""A tiny data set in MASSIVE's release format: what tests train on in seconds and bench/fingerprint.py runs every
task on."""
import json
import re

# Utterances as MASSIVE annotates their slots (annot_utt); the utterance is the text without the brackets.
ANNOTATED = {
    "alarm": ["wake me up at [time : five am]", "set an alarm for [time : noon]", "cancel my alarm",
              "alarm at [time : seven] please"],
    "weather": ["is it raining [date : today]", "what is the weather like", "will it snow [date : tomorrow]",
                "how [weather_descriptor : hot] is it outside"],
    "music": ["play some [music_genre : jazz]", "next song please", "turn up the music",
              "play my [playlist_name : favourite playlist]"],
}


def plain(annot):
    return re.sub(r"\[[^\]:]+ : ([^\]]*)\]", r"\1", annot)


def write_massive(path, rows_per_split=None):
    """A small file in the MASSIVE release format: every scenario in every partition."""
    rows, n = [], 0
    for partition, repeat in (rows_per_split or {"train": 3, "dev": 1, "test": 1}).items():
        for scenario, annots in ANNOTATED.items():
            for annot in annots * repeat:
                rows.append({"id": str(n), "locale": "en-US", "partition": partition, "scenario": scenario,
                             "intent": f"{scenario}_{'set' if n % 2 else 'query'}", "utt": plain(annot),
                             "annot_utt": annot, "worker_id": "0"})
                n += 1
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path
