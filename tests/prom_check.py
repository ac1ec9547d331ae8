#!/usr/bin/python3
"""prom_check.py FILE [EXPECT...]

Parse FILE (Prometheus text exposition format) with the real parser from
python3-prometheus-client and check it: every family once, histogram buckets
cumulative with +Inf equal to _count, and each EXPECT holds. EXPECT is
NAME|LABELS|OP VALUE, LABELS like k=v,k2=v2 (may be empty), OP one of = >= .
Prints "prom_check: ok N families" or the problems; exit status 1 on any.
"""
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    problems = []
    fams = list(text_string_to_metric_families(text))
    names = [f.name for f in fams]
    for n in set(names):
        if names.count(n) > 1:
            problems.append("family %s appears %d times" % (n, names.count(n)))
    samples = {}
    for f in fams:
        series = {}
        for s in f.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in samples:
                problems.append("duplicate sample %s %s" % key)
            samples[key] = s.value
            if f.type == "histogram" and s.name.endswith("_bucket"):
                rest = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                series.setdefault(rest, []).append((float(s.labels["le"]), s.value))
        for rest, buckets in series.items():
            vals = [v for _, v in buckets]
            if vals != sorted(vals):
                problems.append("%s%s: buckets not cumulative" % (f.name, rest))
            if buckets[-1][0] != float("inf"):
                problems.append("%s%s: no +Inf bucket last" % (f.name, rest))
            count = samples.get((f.name + "_count", rest))
            if count != buckets[-1][1]:
                problems.append("%s%s: +Inf %s != count %s" % (f.name, rest, buckets[-1][1], count))
    for exp in sys.argv[2:]:
        name, labels, cond = exp.split("|")
        lab = tuple(sorted(tuple(kv.split("=", 1)) for kv in labels.split(",") if kv))
        op, want = cond.split(" ")
        got = samples.get((name, lab))
        ok = got is not None and (got == float(want) if op == "=" else got >= float(want))
        if not ok:
            problems.append("expected %s{%s} %s %s, got %s" % (name, labels, op, want, got))
    if problems:
        print("prom_check: FAIL\n  " + "\n  ".join(problems))
        return 1
    print("prom_check: ok %d families" % len(fams))
    return 0


if __name__ == "__main__":
    sys.exit(main())
