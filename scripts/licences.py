"""Reads `cargo metadata` JSON on stdin; fails when a crate's licence is not on the allow-list.

SPDX expressions are evaluated: `A OR B` needs one allowed side, `A AND B` both,
`A WITH exception` counts as A. Used by scripts/deps-check.
"""
import json
import re
import sys

ALLOWED = {
    "MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Zlib",
    "Unicode-3.0", "Unicode-DFS-2016", "CC0-1.0", "MPL-2.0", "BSL-1.0", "0BSD",
    "Unlicense", "CDLA-Permissive-2.0", "bzip2-1.0.6",
}


def allowed(expr):
    toks = re.findall(r"\(|\)|[^\s()]+", expr.replace("/", " OR "))
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def atom():
        if peek() == "(":
            take()
            v = disj()
            take()
            return v
        lic = take()
        if peek() == "WITH":
            take()
            take()
        return lic in ALLOWED

    def conj():
        v = atom()
        while peek() == "AND":
            take()
            v = atom() and v
        return v

    def disj():
        v = conj()
        while peek() == "OR":
            take()
            v = conj() or v
        return v

    return disj()


meta = json.load(sys.stdin)
bad = []
for p in meta["packages"]:
    lic = p.get("license")
    if not (lic and allowed(lic)):
        bad.append("%s %s: %s" % (p["name"], p["version"], lic or "no licence field"))
print("licences: %d crates checked, %d not on the allow-list" % (len(meta["packages"]), len(bad)))
for b in bad:
    print("  " + b)
sys.exit(1 if bad else 0)
