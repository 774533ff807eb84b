"""Utterance data in the formats NLU teams keep: MASSIVE JSON lines, Rasa NLU YAML, CSV/TSV, BIO benchmark folders,
and MASSIVE from the Hugging Face hub.

A data set is located once (source()): its format, the files a read looks
at, the name results and run names give it, and a sha256 over its bytes.
Every reader gives the same Examples: the text as written, its labels
({"intent": ..., and any other label column, such as MASSIVE's scenario}),
its slot spans as (start, end, slot type) character offsets with their
boundaries as the data gives them, the split the data names (or None), and
where it came from ("file:line"). Rasa's synonyms ([NYC](city:New York City),
{"value": ...} and `synonym:` entries) come back beside the examples.

A malformed entry is a UserError naming its file, its line (or YAML entry)
and what is wrong; nothing is read past it.
"""
import csv
import fnmatch
import hashlib
import json
import logging
import os
import re
from typing import NamedTuple

from fileio import UserError, file_sha256

log = logging.getLogger(__name__)

FORMATS = ("massive", "rasa", "csv", "bio")  # what --data-format names; the hub is read without a path
SPLITS = ("train", "validation", "test")
HUB_ID, HUB_CONFIG = "AmazonScience/massive", "en-US"
SPLIT_NAMES = {"train": "train", "dev": "validation", "valid": "validation", "validation": "validation",
               "test": "test"}  # as the data may name them
RESERVED = ("O", "Other")  # the outside label of BIO and of MASSIVE's word names


class Example(NamedTuple):
    text: str
    labels: dict  # {column: label name}, "intent" always among them
    spans: tuple  # ((start, end, slot type), ...) into text, in order, not overlapping
    split: str | None  # "train", "validation" or "test" where the data says so
    where: str  # "file:line", for messages


class Dataset(NamedTuple):
    examples: list
    synonyms: dict  # {text as annotated, lower-cased: canonical value}
    files: list  # every file read, in order (the cache key covers their bytes)
    notes: tuple = ()  # "file:line: what was read otherwise than it may look" (check lists them as warnings)


class Source(NamedTuple):
    """One data set, located: what a read looks at and what identifies it, never re-derived from the path."""
    path: str | None  # the file or folder as given; None: MASSIVE from the hub
    format: str  # one of FORMATS, or "hub"
    file: str  # what results record: the file or folder's own name (en-US.jsonl), or the hub's id
    name: str  # run names, caches and reports: the same without its extension (en-US), or "massive"
    files: tuple  # every file a read looks at, in order
    sha256: str | None  # over the names (relative to a folder) and bytes of those files; None for the hub


HUB = Source(None, "hub", f"hub:{HUB_ID}/{HUB_CONFIG}", "massive", (), None)


def source(path, data_format=None):
    """The Source of a data file or folder (HUB for None) in data_format, or the format detect() finds; UserError
    when it is missing or its format cannot be told."""
    if path is None:
        return HUB
    if not os.path.exists(path):
        raise UserError(f"data not found: {path}")
    fmt = data_format or detect(path)
    files = tuple(files_of(path, fmt))
    if os.path.isdir(path):
        h = hashlib.sha256()
        for f in files:
            h.update(os.path.relpath(f, path).encode())
            h.update(file_sha256(f).encode())
        digest = h.hexdigest()
    else:
        digest = file_sha256(path)
    name = os.path.basename(os.path.normpath(path))
    return Source(path, fmt, name, os.path.splitext(name)[0], files, digest)


def detect(path):
    """The format of a file or folder, from its extension or layout; UserError when none fits."""
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, d, "seq.in")) for d in ("train", "dev", "valid", "test")):
            return "bio"
        if yaml_files(path):
            return "rasa"
        raise UserError(f"{path}: no data found (expected Rasa .yml/.yaml files, or train/, dev/ and test/ folders "
                        f"with seq.in, seq.out and label)")
    ext = os.path.splitext(path)[1].lower()
    formats = {".jsonl": "massive", ".json": "massive", ".yml": "rasa", ".yaml": "rasa", ".csv": "csv", ".tsv": "csv"}
    if ext not in formats:
        raise UserError(f"{path}: cannot tell its format from '{ext or 'no extension'}'; give --data-format "
                        f"{'|'.join(FORMATS)}")
    return formats[ext]


def files_of(path, fmt):
    """Every file a read of path in format fmt would look at, in order (without reading them)."""
    if not os.path.isdir(path):
        return [path]
    if fmt == "bio":
        return [p for d in ("train", "dev", "valid", "test") for p in
                (os.path.join(path, d, n) for n in ("seq.in", "seq.out", "label")) if os.path.isfile(p)]
    return yaml_files(path)


def yaml_files(folder):
    """The YAML files (*.yml, *.yaml) under a folder, sorted, hidden ones left out. Symbolic links are not followed:
    a link back into the folder would read its files again (or walk it without end), one out of it reads files that
    are not the data's; each one skipped is named in the log."""
    found, links = [], []
    for root, dirs, files in os.walk(folder):  # os.walk does not descend into linked folders
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                links.append(os.path.join(root, name))
        found += [os.path.join(root, f) for f in files if fnmatch.fnmatch(f, "*.y*ml") and not f.startswith(".")
                  and not os.path.islink(os.path.join(root, f))]
    if links:
        log.warning("%s: %d symbolic link(s) not followed: %s", folder, len(links), ", ".join(sorted(links)))
    return sorted(found)


def read(src):
    """The Dataset of a Source."""
    if src.format == "hub":
        return read_hub()
    if src.format == "rasa":
        return read_rasa(src.path, src.files)
    return {"massive": read_massive, "csv": read_csv, "bio": read_bio}[src.format](src.path)


def text_lines(path):
    """The lines of a UTF-8 text file (a byte-order mark and any line endings allowed); UserError otherwise."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None


def blank(text):
    """Whether a text holds nothing to read: no character that is printable and not a space (NUL, control
    characters and spaces alone count as empty, as the tokenizer reads them)."""
    return not any(c.isprintable() and not c.isspace() for c in text)


def check_type(slot, where):
    if not slot or slot in RESERVED or slot.startswith(("B-", "I-")) or any(c.isspace() for c in slot):
        raise UserError(f"{where}: '{slot}' cannot be a slot type (empty, 'O', 'Other', a B-/I- prefix or spaces)")
    return slot


# ---- annotated text: MASSIVE's [slot : value] and Rasa's [value](entity) / [value]{"entity": ...} ----

def parse_massive(annot):
    """(text, spans) of MASSIVE's annot_utt: "wake me up at [time : five am]" -> ("wake me up at five am",
    ((14, 21, "time"),)). ValueError on unbalanced brackets, a span without " : ", or an empty slot or value."""
    text, spans, rest = "", [], annot
    while rest:
        start = rest.find("[")
        outside = rest if start < 0 else rest[:start]
        if "]" in outside:
            raise ValueError("unbalanced brackets: ']' without '['")
        text += outside
        if start < 0:
            break
        end = rest.find("]", start)
        if end < 0:
            raise ValueError("unbalanced brackets: '[' without ']'")
        span = rest[start + 1:end]
        if "[" in span:
            raise ValueError("unbalanced brackets: '[' inside a span")
        if " : " not in span:
            raise ValueError(f"span '[{span}]' has no ' : ' between slot and value")
        slot, value = span.split(" : ", 1)
        if not slot.strip() or not value.split():
            raise ValueError(f"span '[{span}]' has an empty slot name or value")
        value = value.strip()
        spans.append((len(text), len(text) + len(value), slot.strip()))
        text += value
        rest = rest[end + 1:]
    return text, tuple(spans)


# Rasa's entity syntax, as Rasa's own parser reads it: [text](type), [text](type:synonym), [text]{JSON object} and
# [text][JSON objects]. Brackets that form none of these are text, so that every file Rasa trains on reads here too.
RASA_ENTITY = re.compile(r"\[(?P<text>[^\]]+?)\]"
                         r"(?:\((?P<entity>[^:)]+?)(?::(?P<synonym>[^)]+))?\)"
                         r"|\{(?P<spec>[^}]+?)\}"
                         r"|\[(?P<specs>.*?)\])")
STRAY_BRACKET = "a bracket that is not an annotation: read as text"


def entity_specs(m):
    """The {"entity", "value", "role", ...} objects of a [text]{...} or [text][{...}, ...] match."""
    body, wrap = (m["spec"], "{%s}") if m["spec"] is not None else (m["specs"], "[%s]")
    try:
        specs = json.loads(wrap % body)
    except json.JSONDecodeError as e:
        raise ValueError(f"the annotation of '[{m['text']}]' is not JSON ({e.msg})") from None
    specs = specs if isinstance(specs, list) else [specs]
    if not specs or not all(isinstance(x, dict) and isinstance(x.get("entity"), str) for x in specs):
        raise ValueError(f"the annotation of '[{m['text']}]' needs {{\"entity\": ...}}")
    return specs


def parse_rasa(annotated):
    """(text, spans, synonyms, notes) of a Rasa training example: [value](entity), [value](entity:synonym),
    [value]{"entity": "e", "value": "v", "role": "r", "group": "g"} and [value][{...}, {...}]. A role becomes part
    of the slot type ("city.from"); of a list of entities on one value, the first is read (a span has one type).
    Brackets that form no annotation are text, as in Rasa, with a note. ValueError on an annotation whose JSON is
    malformed or names no entity."""
    text, spans, synonyms, notes, pos = "", [], {}, [], 0
    for m in RASA_ENTITY.finditer(annotated):
        value = m["text"]
        if m["entity"] is not None:
            slot, canonical = m["entity"].strip(), m["synonym"]
        else:
            specs = entity_specs(m)
            spec = specs[0]
            slot = spec["entity"] + (f".{spec['role']}" if spec.get("role") else "")
            canonical = spec.get("value")
            if len(specs) > 1:
                notes.append(f"'[{value}]' has {len(specs)} entities: the first, '{slot}', is read")
        text += annotated[pos:m.start()]
        if value.strip():
            spans.append((len(text), len(text) + len(value), slot))
            if canonical is not None and str(canonical) != value:
                synonyms[value.lower()] = str(canonical)
        else:
            notes.append(f"'[{value}]' annotates only spaces: read as text")
        text += value
        pos = m.end()
    text += annotated[pos:]
    if "[" in text or "]" in text:
        notes.append(STRAY_BRACKET)
    return text, tuple(spans), synonyms, notes


def parse_annotated(annotated):
    """parse_rasa or parse_massive, whichever bracket style the text uses: (text, spans, synonyms, notes)."""
    if re.search(r"\](?:\s*[({]|\[)", annotated):  # Rasa's list form follows its ] at once; MASSIVE's spans do not
        return parse_rasa(annotated)
    return (*parse_massive(annotated), {}, [])


def word_offsets(text):
    """(start, end) character offsets of the words of text.split(), in order."""
    spans, start = [], None
    for i, c in enumerate(text):
        if c.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


# ---- the formats ----

def read_massive(path):
    """MASSIVE JSON lines: utt, intent, and optionally partition (train/dev/test), scenario and annot_utt; other
    fields are ignored."""
    if os.path.isdir(path):
        raise UserError(f"{path}: a folder, but MASSIVE data is one JSON-lines file")
    examples = []
    for n, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: malformed JSON ({e.msg})") from None
        except RecursionError:  # the decoder recurses once per level: a line of a few thousand brackets
            raise UserError(f"{where}: malformed JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object")
        for field in ("utt", "intent"):
            if not isinstance(row.get(field), str):
                raise UserError(f"{where}: missing or non-text field '{field}'")
        split = row.get("partition")
        if split is not None and split not in ("train", "dev", "test"):
            raise UserError(f"{where}: unknown partition '{split}' (expected train, dev or test)")
        labels = {k: row[k] for k in ("intent", "scenario") if isinstance(row.get(k), str)}
        spans = ()
        if "annot_utt" in row:
            spans = massive_spans(row, where)
        examples.append(Example(row["utt"], labels, spans, split and SPLIT_NAMES[split], where))
    return Dataset(examples, {}, [path])


def massive_columns(path):
    """The fields of the first row of a MASSIVE file (an empty set where it does not parse: reading it says why),
    read without the rest of the file: what its default label is chosen by."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            line = next((line for line in f if line.strip()), "{}")
        row = json.loads(line)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return set()
    return set(row) if isinstance(row, dict) else set()


def massive_spans(row, where):
    """The spans of a MASSIVE row's annot_utt, placed on the words of its utt (MASSIVE's reading: the words are
    utt.split(), so both must have as many words)."""
    if not isinstance(row["annot_utt"], str):
        raise UserError(f"{where}: missing or non-text field 'annot_utt'")
    try:
        plain, spans = parse_massive(row["annot_utt"])
    except ValueError as e:
        raise UserError(f"{where}: malformed annot_utt: {e}") from None
    starts = [s for s, _ in word_offsets(plain)]
    if len(starts) != len(row["utt"].split()):
        raise UserError(f"{where}: malformed annot_utt: annot_utt has {len(starts)} words, utt has "
                        f"{len(row['utt'].split())}")
    for slot in {s for _, _, s in spans}:
        check_type(slot, where)
    # on the words of utt, each span from its first word to its last (MASSIVE's spans never touch one of a type)
    words, out = word_offsets(row["utt"]), []
    for start, end, slot in spans:
        covered = [w for w, s in enumerate(starts) if start <= s < end]
        out.append((words[covered[0]][0], words[covered[-1]][1], slot))
    return tuple(out)


def read_csv(path):
    """CSV or TSV with a header: text, intent, optionally annotation (or slots) in either bracket style, and split;
    every other column is a further label column."""
    lines = text_lines(path)
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    rows = csv_rows(csv.reader(lines, delimiter=delimiter), path)
    header = [h.strip() for h in next(rows, [])]
    missing = [c for c in ("text", "intent") if c not in header]
    if missing:
        raise UserError(f"{path}:1: the header has no {' or '.join(repr(c) for c in missing)} column "
                        f"(it has {', '.join(header) or 'nothing'})")
    annotated = next((c for c in ("annotation", "slots") if c in header), None)
    label_columns = [c for c in header if c not in ("text", annotated, "split")]
    examples, synonyms, notes = [], {}, []
    for n, row in enumerate(rows, 2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{n}"
        if len(row) != len(header):
            raise UserError(f"{where}: {len(row)} fields, the header has {len(header)}")
        cell = dict(zip(header, row))
        text, spans = cell["text"], ()
        if annotated and cell[annotated].strip():
            text, spans, found = parse_or_fail(parse_annotated, cell[annotated], where, notes)
            if text.split() != cell["text"].split():
                raise UserError(f"{where}: the {annotated} column, without its brackets, is not the text")
            synonyms.update(found)
        if blank(text) or blank(cell["intent"]):
            raise UserError(f"{where}: empty text or intent")
        split = cell.get("split", "").strip().lower() or None
        if split is not None and split not in SPLIT_NAMES:
            raise UserError(f"{where}: unknown split '{split}' (expected train, dev, valid or test)")
        labels = {c: cell[c].strip() for c in label_columns if cell[c].strip()}
        examples.append(Example(text, labels, spans, split and SPLIT_NAMES[split], where))
    return Dataset(examples, synonyms, [path], tuple(notes))


def csv_rows(reader, path):
    """The rows of a csv.reader; a row it cannot read (a field over csv.field_size_limit(), 128 KiB, an unclosed
    quote, ...) is a UserError naming its line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: not CSV ({e})") from None
        yield row


def parse_or_fail(parse, annotated, where, notes):
    """(text, spans, synonyms) of an annotated example; its notes appended to notes with where."""
    try:
        text, spans, synonyms, found = parse(annotated)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    for _, _, slot in spans:
        check_type(slot, where)
    notes += [f"{where}: {note}" for note in found]
    return text, spans, synonyms


def read_bio(folder):
    """The ATIS/SNIPS layout: train/, dev/ (or valid/) and test/, each with seq.in (words), seq.out (one BIO tag per
    word) and label (the intent; a multi-intent label such as a#b is one label)."""
    examples, files = [], []
    found = [d for d in ("train", "dev", "valid", "test") if os.path.isdir(os.path.join(folder, d))]
    if not found:
        raise UserError(f"{folder}: no train/, dev/ (or valid/) or test/ folder with seq.in, seq.out and label")
    for d in found:
        paths = [os.path.join(folder, d, name) for name in ("seq.in", "seq.out", "label")]
        for p in paths:
            if not os.path.isfile(p):
                raise UserError(f"{p}: missing (each split folder holds seq.in, seq.out and label)")
        words, tags, intents = (text_lines(p) for p in paths)
        counts = {os.path.basename(p): len(x) for p, x in zip(paths, (words, tags, intents))}
        if len(set(counts.values())) > 1:
            raise UserError(f"{os.path.join(folder, d)}: seq.in, seq.out and label have different line counts "
                            f"({', '.join(f'{k} {v}' for k, v in counts.items())})")
        for n, (line, tag_line, intent) in enumerate(zip(words, tags, intents), 1):
            where = f"{paths[1]}:{n}"
            text, spans = bio_example(line, tag_line, where)
            if not intent.strip():
                raise UserError(f"{paths[2]}:{n}: empty label")
            examples.append(Example(text, {"intent": intent.strip()}, spans, SPLIT_NAMES[d], where))
        files += paths
    return Dataset(examples, {}, files)


def bio_example(line, tag_line, where):
    """(text, spans) of one seq.in line and its seq.out tags. An I- tag after O or after another type opens a span,
    as seqeval reads it."""
    text, tags = line.strip(), tag_line.split()
    words = word_offsets(text)
    if len(words) != len(tags):
        raise UserError(f"{where}: {len(tags)} tags for {len(words)} words")
    spans, current = [], None
    for (start, end), tag in zip(words, tags):
        if tag == "O":
            current = None
            continue
        if not re.fullmatch(r"[BI]-\S+", tag):
            raise UserError(f"{where}: illegal tag '{tag}' (expected O, B-type or I-type)")
        kind, slot = tag[0], tag[2:]
        if kind == "I" and current == slot:
            spans[-1] = (spans[-1][0], end, slot)
        else:
            spans.append((start, end, check_type(slot, where)))
        current = slot
    return text, tuple(spans)


def read_rasa(path, files=None):
    """Rasa NLU training data (2.x and 3.x YAML), a file or a folder searched recursively (files: its YAML files,
    as files_of lists them): `nlu:` entries only; the other files' kinds (stories, rules, domain) and regex/lookup
    entries are counted in the log."""
    import yaml  # lazily: only Rasa data needs PyYAML

    files = files_of(path, "rasa") if files is None else files
    examples, synonyms, read_files, skipped, unused, notes = [], {}, [], {}, {"regex": 0, "lookup": 0}, []
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where PyYAML has it: 10x faster
    for f in files:
        text = "\n".join(text_lines(f))
        try:  # the nodes place each entry on its line; the values come from one load, once no alias is found
            root = yaml.compose(text, Loader=loader)
            refuse_aliases(root, f)
            values = yaml.load(text, Loader=loader)
        except yaml.MarkedYAMLError as e:
            where = f"{f}:{e.problem_mark.line + 1}" if e.problem_mark else f
            raise UserError(f"{where}: not YAML ({e.problem or e.context})") from None
        except yaml.YAMLError as e:
            raise UserError(f"{f}: not YAML ({str(e).splitlines()[0]})") from None
        nlu = yaml_key(root, "nlu")
        if nlu is None:
            kinds = [k for k in ("stories", "rules", "intents", "responses") if yaml_key(root, k) is not None]
            if not os.path.isdir(path):
                raise UserError(f"{f}: no 'nlu:' section (a Rasa NLU file lists its examples under 'nlu:')")
            skipped[kinds[0] if kinds else "other"] = skipped.get(kinds[0] if kinds else "other", 0) + 1
            continue
        read_files.append(f)
        rasa_entries(f, nlu, values["nlu"], examples, synonyms, unused, notes)
    if not read_files:
        raise UserError(f"{path}: no Rasa file with an 'nlu:' section")
    log.info("Rasa data: %d examples from %d NLU file(s)%s; %d regex and %d lookup entries not used", len(examples),
             len(read_files), "".join(f", {n} {k} file(s) skipped" for k, n in skipped.items()), unused["regex"],
             unused["lookup"])
    if notes:
        log.warning("%d example(s) read otherwise than they may look, as Rasa reads them (check lists them): %s",
                    len(notes), notes[0] + (" ..." if len(notes) > 1 else ""))
    return Dataset(examples, synonyms, read_files, tuple(notes))


def refuse_aliases(root, path):
    """UserError where a YAML node is reached twice (an alias, *name): training data needs none, and nested aliases
    (the "billion laughs") expand without bound. The walk visits each node once, so it is linear in the file."""
    import yaml

    seen, stack = set(), [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise UserError(f"{path}:{node.start_mark.line + 1}: a YAML alias of this node (&anchor / *alias): "
                            "Rasa training data is read without aliases")
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack += [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def yaml_key(node, key):
    """The value node of key in a YAML mapping node, or None."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)


def rasa_entries(path, nlu, values, examples, synonyms, unused, notes):
    """The examples, synonyms and notes of one file's nlu: section (its nodes, and the same loaded as values),
    appended; each entry is checked and placed by line. Other keys of an entry (metadata) are not read."""
    import yaml

    if not isinstance(nlu, yaml.SequenceNode):
        raise UserError(f"{path}:{nlu.start_mark.line + 1}: 'nlu:' must be a list of entries")
    for entry, data in zip(nlu.value, values):
        line = entry.start_mark.line + 1
        if not isinstance(data, dict):
            raise UserError(f"{path}:{line}: an nlu entry must be a mapping (intent:, synonym:, regex: or lookup:)")
        kind = next((k for k in ("intent", "synonym", "regex", "lookup") if k in data), None)
        if kind is None:
            raise UserError(f"{path}:{line}: an nlu entry without intent:, synonym:, regex: or lookup:")
        if kind in unused:
            unused[kind] += 1
            continue
        name = data[kind]
        if not isinstance(name, (str, int)) or isinstance(name, bool) or blank(str(name)):
            raise UserError(f"{path}:{line}: '{kind}:' must name it with text, not {type(name).__name__} {name!r:.40}")
        texts = rasa_examples(yaml_key(entry, "examples"), f"{path}:{line}", str(name), notes)
        if kind == "synonym":
            synonyms.update({t.strip().lower(): str(name) for t, _ in texts})
            continue
        for text, n in texts:
            where = f"{path}:{n}"
            plain, spans, found = parse_or_fail(parse_rasa, text, where, notes)
            synonyms.update(found)
            examples.append(Example(plain, {"intent": str(name)}, spans, None, where))


def rasa_examples(node, where, name, notes):
    """[(example, its line)] of an entry's examples node: a block of "- " lines, or a list of strings or of
    {text, metadata}. As in Rasa, a block line that does not start with "-" is skipped (with a note), and an example
    is stripped of spaces and line breaks; an empty one is skipped."""
    import yaml

    out = []
    if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str):
        for n, line in enumerate(node.value.splitlines(), node.start_mark.line + 2):  # the block opens a line down
            if line.startswith("-"):
                out.append((line[1:].strip(" \r\n"), n))
            elif line.strip():
                notes.append(f"{where.rsplit(':', 1)[0]}:{n}: '{line.strip():.40}' of '{name}' does not start "
                             "with '-': skipped, as Rasa does")
    elif isinstance(node, yaml.SequenceNode):
        items = [(yaml_key(x, "text") if isinstance(x, yaml.MappingNode) else x) for x in node.value]
        if not all(isinstance(x, yaml.ScalarNode) for x in items):
            raise UserError(f"{where}: '{name}' has an example that is not text (a string, or {{text: ...}})")
        out = [(x.value.strip(" \r\n"), x.start_mark.line + 1) for x in items]
    else:
        raise UserError(f"{where}: '{name}' has no examples (a block of '- ' lines, or a list of {{text: ...}})")
    return [(text, n) for text, n in out if text]


def read_hub():
    """MASSIVE en-US from the Hugging Face hub (needs `datasets` and a network)."""
    try:
        import datasets  # lazily: machines without it can still train from a file

        try:
            ds = datasets.load_dataset(HUB_ID, HUB_CONFIG)
        except RuntimeError:  # datasets >= 4 runs no loading scripts; the hub's parquet conversion needs none
            ds = datasets.load_dataset(HUB_ID, HUB_CONFIG, revision="refs/convert/parquet")
    except Exception as e:
        raise UserError(f"could not load {HUB_ID} ({HUB_CONFIG}) from the hub ({type(e).__name__}); "
                        "offline, pass --data PATH/en-US.jsonl (the MASSIVE release file) or set MASSIVE_DATA") from None
    names = {k: ds["train"].features[k].names for k in ("intent", "scenario")}  # the hub stores ClassLabel ids
    examples = []
    for split in SPLITS:
        for n, r in enumerate(ds[split]):
            row = {"utt": r["utt"], "annot_utt": r["annot_utt"]}
            where = f"hub:{HUB_ID}/{HUB_CONFIG}/{split}:{n}"
            examples.append(Example(r["utt"], {k: names[k][r[k]] for k in names}, massive_spans(row, where), split,
                                    where))
    return Dataset(examples, {}, [])
