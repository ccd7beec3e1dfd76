"""Independent figures for the EHR gold tables (tests/it/gold_ehr.rs), computed straight from the
FHIR files with the Python standard library: nothing of vitalake's code path (views, SQL) is used.

Usage: python3 gold_ehr.py FILE_OR_FOLDER... > figures.json
"""
import json
import os
import sys
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from statistics import mean, median


def resources(paths):
    """Every resource in the files (JSON resources or Bundles, NDJSON), by type."""
    out = defaultdict(list)

    def push(value):
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry", []):
                if "resource" in entry:
                    push(entry["resource"])
        else:
            out[value["resourceType"]].append(value)

    def read(path):
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                read(os.path.join(path, name))
            return
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".ndjson"):
            for line in text.splitlines():
                if line.strip():
                    push(json.loads(line))
        else:
            push(json.loads(text))

    for p in paths:
        read(p)
    return out


def instant(text):
    """A FHIR dateTime as an aware UTC datetime (a date alone is its midnight UTC)."""
    if text is None:
        return None
    if len(text) == 10:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def key(reference):
    return reference.split(":")[-1].split("/")[-1] if reference else None


def first_coding(concept):
    codings = (concept or {}).get("coding", [])
    return codings[0] if codings else {}


def utilization(encounters):
    now = datetime.now(timezone.utc)
    stays = []
    for e in encounters:
        start = instant(e.get("period", {}).get("start"))
        ended = instant(e.get("period", {}).get("end"))
        if start is None or e.get("status") in ("planned", "cancelled", "entered-in-error"):
            continue
        end = ended or now
        if end < start:
            continue
        stays.append(dict(id=e["id"], patient=key(e["subject"]["reference"]),
                          cls=e.get("class", {}).get("code", "unknown"),
                          start=start, end=end, ended=ended))
    rows = defaultdict(lambda: dict(admissions=0, discharges=0, census=0, bed_seconds=0.0,
                                    los=[], readmissions=0))
    for s in stays:
        rows[(s["start"].date().isoformat(), s["cls"])]["admissions"] += 1
        day = s["start"].date()
        while day <= s["end"].date():
            midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            nxt = midnight + timedelta(days=1)
            row = rows[(day.isoformat(), s["cls"])]
            if s["end"] >= nxt:
                row["census"] += 1
            row["bed_seconds"] += (min(s["end"], nxt) - max(s["start"], midnight)).total_seconds()
            day += timedelta(days=1)
        if s["ended"] is not None:
            row = rows[(s["ended"].date().isoformat(), s["cls"])]
            row["discharges"] += 1
            row["los"].append((s["ended"] - s["start"]).total_seconds() / 3600)
            if any(n["patient"] == s["patient"] and n["cls"] == s["cls"] and n["id"] != s["id"]
                   and s["ended"] < n["start"] <= s["ended"] + timedelta(days=30) for n in stays):
                row["readmissions"] += 1
    return [
        dict(day=d, encounter_class=c, admissions=r["admissions"], discharges=r["discharges"],
             census=r["census"], bed_days=r["bed_seconds"] / 86400,
             los_mean_hours=mean(r["los"]) if r["los"] else None,
             los_median_hours=median(r["los"]) if r["los"] else None,
             readmissions_30d=r["readmissions"])
        for (d, c), r in sorted(rows.items())
    ]


def active_conditions(conditions):
    out = []
    for c in conditions:
        verification = first_coding(c.get("verificationStatus")).get("code", "")
        clinical = first_coding(c.get("clinicalStatus")).get("code", "active")
        onset = c.get("onsetDateTime") or c.get("onsetPeriod", {}).get("start") or c.get("recordedDate")
        abatement = c.get("abatementDateTime") or c.get("abatementPeriod", {}).get("start")
        coding = first_coding(c.get("code"))
        if verification in ("refuted", "entered-in-error") or not coding.get("code") or not onset:
            continue
        out.append(dict(patient=key(c["subject"]["reference"]), system=coding.get("system", ""),
                        code=coding["code"], clinical=clinical,
                        starts=instant(onset).date(),
                        ends=instant(abatement).date() if abatement else None))
    return out


def prevalence(conditions):
    counted = [c for c in conditions
               if c["ends"] is not None or c["clinical"] in ("active", "recurrence", "relapse")]
    days = defaultdict(set)
    for c in counted:
        days[(c["system"], c["code"])].add(c["starts"])
        if c["ends"] is not None:
            days[(c["system"], c["code"])].add(c["ends"])
    rows = []
    for (system, code), changes in days.items():
        for day in changes:
            patients = {c["patient"] for c in counted
                        if (c["system"], c["code"]) == (system, code)
                        and c["starts"] <= day and (c["ends"] is None or c["ends"] > day)}
            rows.append(dict(day=day.isoformat(), code_system=system, code=code, patients=len(patients)))
    return sorted(rows, key=lambda r: (r["day"], r["code_system"], r["code"]))


VITAL_SIGN_LOINC = {"85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2",
                    "9843-4", "29463-7", "39156-5", "85354-9", "55284-4", "8480-6", "8462-4"}


def is_lab(o):
    categories = {c.get("code") for cat in o.get("category", []) for c in cat.get("coding", [])}
    loinc = {c.get("code") for c in o.get("code", {}).get("coding", []) if c.get("system") == "http://loinc.org"}
    return o.get("status") != "entered-in-error" and (
        "laboratory" in categories
        or (not o.get("category") and loinc and not (loinc & VITAL_SIGN_LOINC)))


def labs(observations):
    rows = defaultdict(lambda: dict(results=0, abnormal=0, high=0, low=0, critical=0))
    for o in filter(is_lab, observations):
        coding = first_coding(o.get("code"))
        when = o.get("effectiveDateTime") or o.get("effectiveInstant") or \
            o.get("effectivePeriod", {}).get("start") or o.get("issued")
        if not coding.get("code") or not when:
            continue
        value = o.get("valueQuantity", {}).get("value")
        ranges = o.get("referenceRange", [{}])
        low, high = ranges[0].get("low", {}).get("value"), ranges[0].get("high", {}).get("value")
        flag = first_coding((o.get("interpretation") or [{}])[0]).get("code")
        if flag not in ("HH", "LL", "AA", "H", "L", "A"):
            flag = None
            if value is not None and low is not None and value < low:
                flag = "L"
            elif value is not None and high is not None and value > high:
                flag = "H"
        row = rows[(instant(when).date().isoformat(), coding.get("system"), coding["code"])]
        row["results"] += 1
        row["abnormal"] += flag is not None
        row["high"] += flag in ("H", "HH")
        row["low"] += flag in ("L", "LL")
        row["critical"] += flag in ("HH", "LL", "AA")
    return [dict(day=d, code_system=s, code=c, **r) for (d, s, c), r in sorted(rows.items())]


def summaries(found, conditions):
    out = {}
    for p in found["Patient"]:
        out[p["id"]] = dict(active_conditions=0, last_encounter_class=None, last=None)
    for c in conditions:
        if c["patient"] in out and c["ends"] is None and c["clinical"] in ("active", "recurrence", "relapse"):
            out[c["patient"]]["active_conditions"] += 1
    for e in found["Encounter"]:
        patient, start = key(e["subject"]["reference"]), e.get("period", {}).get("start")
        if patient in out and start:
            # The latest start; on a tie the smallest id (the SQL orders by start DESC, id).
            best = out[patient]["last"]
            when = instant(start)
            if best is None or when > best[0] or (when == best[0] and e["id"] < best[1]):
                out[patient]["last"] = (when, e["id"])
                out[patient]["last_encounter_class"] = e.get("class", {}).get("code")
    for row in out.values():
        row.pop("last")
    return out


def main():
    found = resources(sys.argv[1:])
    conditions = active_conditions(found["Condition"])
    json.dump(dict(utilization=utilization(found["Encounter"]),
                   prevalence=prevalence(conditions),
                   labs=labs(found["Observation"]),
                   summaries=summaries(found, conditions)), sys.stdout)


main()
