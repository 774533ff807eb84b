"""Slot values a program can act on: dates, times, durations, numbers and amounts resolved by Duckling, and
synonyms mapped to their canonical value.

Duckling (Facebook's rule-based parser, BSD) runs in-process from the PyPI
wheel `pyduckling-native-phihos`, which has the engine compiled in: no
server. A slot whose type maps to Duckling dimensions (SLOT_DIMS; a slot type
named like a dimension maps itself) gains `resolved`; a slot whose text is in
the synonym table gains `normalized`. What cannot be resolved has no key: it
is never an error. Where the wheel is missing (another platform), resolution
is skipped with one log line.

Relative expressions depend on the reference time and its zone: each call
takes them, as context() checked them (default: now, in the machine's zone). The whole utterance is parsed
once and each result attached to the slots it overlaps (STRATEGY;
docs/resolution.md measures both ways on two hand-written gold sets).

Where Duckling's reading is not what an assistant acts on, four rules apply
(docs/resolution.md says why each):
- a bare hour ("set an alarm for five"), which Duckling marks latent and
  drops, is read in a slot whose type maps to time: the slot settles it;
- a time of day Duckling puts earlier today (an interval: one over), in an utterance that does not
  speak of the past, is the next such time: 12 hours on where the hour was
  said without am, pm or a part of the day ("at three today" at 10:00 is
  15:00), else a day on ("twenty past six in the morning" at 09:00 is
  tomorrow's); off with future=False (--keep-past-times);
- "morning" starts at 04:00 (Duckling's starts at midnight);
- an interval keeps Duckling's exclusive end as `to` and adds `last`, its
  last grain included ("two to three thirty" has to 15:31 and last 15:30).
"""
import calendar
import datetime
import functools
import logging
import os
import re
import zoneinfo

log = logging.getLogger("resolver")

DIMENSIONS = ("time", "duration", "number", "ordinal", "temperature", "amount-of-money", "distance", "volume",
              "quantity", "credit-card-number", "email", "phone-number", "url")
# MASSIVE's slot types that Duckling resolves, and the dimensions to look for in them, chosen from
# bench/resolution.py's coverage of en-US test's gold spans (docs/resolution.md): date 98% (time), time 75% (time,
# or duration in "a timer for ten minutes"), timeofday 52% ("tonight": an interval), change_amount 25% ("twenty
# percent"), email_address 89%. Left out: general_frequency (35%, and "every day" is a recurrence that a single time
# misstates), time_zone (15%, read as numbers), currency_name (0%: "dollars" is no amount), radio_name ("radio 1" is a
# name, not the number 1), and the names, places and media types, which are words, not values.
SLOT_DIMS = {
    "date": ("time",),
    "time": ("time", "duration"),
    "timeofday": ("time",),
    "change_amount": ("number",),
    "email_address": ("email",),
}
TIMEZONES = "/usr/share/zoneinfo"
# Duckling's parse time grows faster than its text (on a 2-core AMD EPYC: 250 characters 7 ms, 500 21 ms, 1,000 69 ms,
# 2,000 0.4 s): it reads an utterance of up to WINDOW characters whole, and of a longer text only the pieces around
# the slots (windows())
WINDOW, CONTEXT, MAX_WINDOWS = 256, 32, 8
# words by which an utterance speaks of the past: its times stay where Duckling puts them
PAST_WORDS = frozenset("yesterday ago last was were did had earlier since previous passed".split())
# what fixes the half of the day of an hour: with none, "three" may be 15:00
HALF_DAY = re.compile(r"\b(?:[ap]\.?\s?m\b\.?|morning|afternoon|evening|night|tonight|noon|midnight)", re.I)
MORNING_STARTS = 4  # o'clock; Duckling's morning is midnight to noon


class ContextError(ValueError):
    """A bad reference time or time zone: the CLI prints it as one line, /parse answers 422."""


@functools.cache
def engine():
    """The duckling module and its time-zone database, or None (logged once) where the wheel is missing."""
    try:
        import duckling
    except ImportError:
        log.warning("slot values are not resolved: the Duckling wheel (pip install pyduckling-native-phihos) is not "
                    "installed for this platform")
        return None
    if not os.path.isdir(TIMEZONES):
        log.warning("slot values are not resolved: no time-zone database in %s (install tzdata)", TIMEZONES)
        return None
    return duckling, duckling.load_time_zones(TIMEZONES)


def machine_timezone():
    """The IANA name of this machine's zone ($TZ, else /etc/localtime's link), else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if not name and os.path.islink("/etc/localtime"):
        name = os.path.realpath("/etc/localtime").split("zoneinfo/", 1)[-1]
    try:
        zoneinfo.ZoneInfo(name)
        return name
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "UTC"


def context(reference_time=None, timezone=None):
    """(the reference time as an aware datetime, the IANA zone name) from the request's strings; ContextError when
    either is malformed. A reference time without an offset is read in the zone."""
    zone = timezone or machine_timezone()
    try:
        tz = zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ContextError(f"timezone '{zone}' is not an IANA time zone name (such as Europe/Berlin)") from None
    if reference_time is None:
        return datetime.datetime.now(tz), zone
    try:
        when = datetime.datetime.fromisoformat(reference_time)
    except (TypeError, ValueError):
        raise ContextError(f"reference_time '{reference_time}' is not an ISO 8601 date and time "
                           "(such as 2026-12-05T10:00:00+01:00)") from None
    return (when if when.tzinfo else when.replace(tzinfo=tz)), zone


def written(text):
    """The text as Duckling gets it, of the same length so that every offset stays in place: speech transcripts'
    "p. m." and "a. m." (MASSIVE's), which Duckling reads as no time, written as "p.m. "; and NUL characters, which
    its C strings cannot hold, as spaces."""
    return re.sub(r"\b([aApP])\. ([mM])\.", r"\1.\2. ", text).replace("\0", " ")


def parsed(duckling, text, ctx, dims, latent=False):
    """Duckling's entities of text (with latent ones, such as a bare hour, if asked), or none where the engine
    fails: a value left unresolved, never an error."""
    try:
        return duckling.parse(written(text), ctx, duckling.parse_dimensions(list(dims)), latent)
    except BaseException as e:  # the engine's Rust panics are BaseExceptions
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        log.warning("Duckling failed on a %d-character text (%s); its slots stay unresolved", len(text),
                    type(e).__name__)
        return []


def value_of(entity):
    """Duckling's entity as the answer's `resolved`: times with their grain (intervals with from, the exclusive
    end to, and last, the last grain included), durations with seconds and the unit said, numbers and amounts with
    their value and unit."""
    dim, v = entity["dim"], entity["value"]
    if v.get("type") == "interval":
        ends = {k: v[k] for k in ("from", "to") if k in v}
        out = {"dim": dim, **{k: e["value"] for k, e in ends.items()}}
        grain = next((e["grain"] for e in ends.values() if "grain" in e), None)
        unit = next((e["unit"] for e in ends.values() if "unit" in e), None)
        if dim == "time" and grain and len(ends) == 2:
            out["last"] = shifted(out["to"], grain, -1)
        return {**out, **({"grain": grain} if grain else {}), **({"unit": unit} if unit else {})}
    if dim == "time":
        return {"dim": dim, "value": v["value"], "grain": v["grain"]}
    if dim == "duration":
        return {"dim": dim, "seconds": v["normalized"]["value"], "value": v["value"], "unit": v["unit"]}
    return {"dim": dim, "value": v["value"], **({"unit": v["unit"]} if v.get("unit") else {})}


def shifted(iso, grain, n):
    """Duckling's ISO time moved by n of its grain, on the wall clock of its zone."""
    t = datetime.datetime.fromisoformat(iso)
    months = {"month": 1, "quarter": 3, "year": 12}.get(grain)
    if months:
        m = t.year * 12 + t.month - 1 + n * months
        year, month = divmod(m, 12)
        t = t.replace(year=year, month=month + 1, day=min(t.day, calendar.monthrange(year, month + 1)[1]))
    else:
        t = t + datetime.timedelta(**{{"week": "weeks"}.get(grain, grain + "s"): n})
    return t.isoformat(timespec="milliseconds")


def adjusted(entity, text, when, tz):
    """A time entity as an assistant acts on it: a morning from MORNING_STARTS, and a time of day that Duckling
    puts earlier today moved to the next such time, unless the text speaks of the past (PAST_WORDS)."""
    v = entity["value"]
    if entity["dim"] != "time":
        return entity
    v = {k: (dict(x) if isinstance(x, dict) else x) for k, x in v.items()}
    start = v.get("from") if v.get("type") == "interval" else v
    if (v.get("type") == "interval" and "to" in v and start and "morning" in entity["body"].lower()
            and start["value"][11:16] == "00:00" and v["to"]["value"][11:16] == "12:00"):
        start["value"] = start["value"][:11] + f"{MORNING_STARTS:02d}" + start["value"][13:]
    if not start or start.get("grain") not in ("hour", "minute", "second") or PAST_WORDS & set(
            re.findall(r"[a-z']+", text.lower())):
        return {**entity, "value": v}
    t = datetime.datetime.fromisoformat(start["value"])
    over = datetime.datetime.fromisoformat(v["to"]["value"]) <= when if "to" in v else t < when
    if not over or t.astimezone(tz).date() != when.astimezone(tz).date():  # "this morning" at 10:00 is not over
        return {**entity, "value": v}
    if not HALF_DAY.search(entity["body"]) and t + datetime.timedelta(hours=12) > when:
        step = datetime.timedelta(hours=12)
    elif "today" not in entity["body"].lower():
        step = datetime.timedelta(days=1)  # on the zone's wall clock: the same time of day across a DST change
    else:
        return {**entity, "value": v}
    for end in [v.get("from"), v.get("to")] if v.get("type") == "interval" else [v]:
        if end:
            moved = datetime.datetime.fromisoformat(end["value"]).astimezone(tz) + step
            end["value"] = moved.isoformat(timespec="milliseconds")
    return {**entity, "value": v}


class Resolver:
    """Resolves the predicted slots of utterances: `resolved` from Duckling, `normalized` from synonyms.

    slot_dims: {slot type: dimensions} over SLOT_DIMS; synonyms: {text (lower-cased): canonical value}; locale:
    Duckling's, from the checkpoint's language; strategy: "utterance" (parse the whole utterance once, attach
    each result to the slots it overlaps) or "slot" (parse each slot's own text); future: a time of day earlier
    today moves to the next one (adjusted()).
    """

    def __init__(self, slot_dims=None, synonyms=None, locale="EN_US", strategy="utterance", future=True):
        self.slot_dims = {**SLOT_DIMS, **(slot_dims or {})}
        self.synonyms = {k.lower(): v for k, v in (synonyms or {}).items()}
        self.locale, self.strategy, self.future = locale, strategy, future

    def dims_of(self, slot):
        """The dimensions a slot type maps to: the table's, or the type itself where it names one (a role such as
        time.start counts as its entity)."""
        base = slot.split(".", 1)[0]
        return self.slot_dims.get(slot) or self.slot_dims.get(base) or ((base,) if base in DIMENSIONS else ())

    def __call__(self, text, slots, when=None):
        """The slots ([{"slot", "value", "start", "end", ...}] of one utterance) with `normalized` and `resolved`
        added where they apply, relative to when: (reference time, zone) as context() gives them, checked once per
        request (default: now, in the machine's zone)."""
        when, zone = when or context()
        out = [dict(s) for s in slots]
        for s in out:
            canonical = self.synonyms.get(s["value"].lower())
            if canonical is not None:
                s["normalized"] = canonical
        wanted = [s for s in out if self.dims_of(s["slot"])]
        if wanted and engine() is not None:
            self.attach(text, wanted, when, zone)
        return out

    def attach(self, text, slots, when, zone):
        duckling, zones = engine()
        ctx = duckling.Context(duckling.parse_ref_time(zones, zone, int(when.timestamp())),
                               duckling.parse_locale(self.locale, duckling.default_locale_lang(
                                   duckling.parse_lang(self.locale.split("_")[0]))))
        slots = [s for s in slots if s["end"] - s["start"] <= WINDOW]  # a longer "value" is no value: unresolved
        if self.strategy == "utterance":
            dims = sorted({d for s in slots for d in self.dims_of(s["slot"])})
            pieces = windows(len(text), slots)
            found = [{**e, "start": e["start"] + lo, "end": e["end"] + lo}
                     for lo, hi in pieces for e in parsed(duckling, text[lo:hi], ctx, dims)]
            # a slot no piece covers stays unresolved, without a parse of its own: the work stays bounded
            slots = [s for s in slots if any(lo <= s["start"] and s["end"] <= hi for lo, hi in pieces)]
        for s in slots:
            dims = self.dims_of(s["slot"])
            if self.strategy == "utterance":
                best = best_overlap(found, s["start"], s["end"], dims)
            else:
                best = best_overlap(parsed(duckling, s["value"], ctx, dims), 0, len(s["value"]), dims)
            if best is None and "time" in dims:  # a bare hour: latent to Duckling, a time in a time slot
                clock = [e for e in parsed(duckling, s["value"], ctx, ("time",), latent=True)
                         if e["value"].get("type") == "value" and e["value"].get("grain") in ("hour", "minute")]
                best = best_overlap(clock, 0, len(s["value"]), ("time",))
            if best:
                if self.future:
                    best = adjusted(best, text, when, zoneinfo.ZoneInfo(zone))
                s["resolved"] = value_of(best)


def windows(length, slots):
    """The (start, end) pieces of a text of `length` characters that Duckling parses for these slots: the whole text
    up to WINDOW characters (an utterance, with all its context); in a longer one, each slot with CONTEXT characters
    on either side, neighbours together while they fit in WINDOW, and at most MAX_WINDOWS of them (the slots after
    stay unresolved). Duckling's time grows faster than its text, so each parse stays short and one request cannot
    hold the server."""
    if length <= WINDOW:
        return [(0, length)]
    out = []
    for s in sorted(slots, key=lambda s: s["start"]):
        lo, hi = max(0, s["start"] - CONTEXT), min(length, s["end"] + CONTEXT)
        if out and max(hi, out[-1][1]) - out[-1][0] <= WINDOW:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        elif len(out) < MAX_WINDOWS:
            out.append((lo, hi))
    return out


def best_overlap(entities, start, end, dims):
    """The entity of one of dims that overlaps [start, end) the most (the earlier dimension on a tie), or None."""
    scored = [(min(end, e["end"]) - max(start, e["start"]), -dims.index(e["dim"]), e) for e in entities
              if e["dim"] in dims and min(end, e["end"]) > max(start, e["start"])]
    return max(scored, key=lambda x: x[:2])[2] if scored else None
