#!/usr/bin/env python3
"""Keeps fuzz/corpus/<target>/ small: the hand-written seeds (seed-*) and
regression inputs (crash-*) always, plus at most N inputs picked greedily by
the coverage edges they add (libFuzzer's merge control file gives each
input's edges).

    minimize.py CONTROL_FILE CORPUS_DIR N
"""
import hashlib, os, shutil, sys

ctl, corpus, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(ctl).read().split("\n")
nfiles = int(lines[0])
files = lines[2:2 + nfiles]
cov = {}
for line in lines[2 + nfiles:]:
    parts = line.split()
    if len(parts) >= 2 and parts[0] == "COV":
        cov[int(parts[1])] = set(parts[2:])
keep = lambda p: os.path.basename(p).startswith(("seed-", "crash-")) and os.path.dirname(os.path.abspath(p)) == os.path.abspath(corpus)
covered = set()
for i, f in enumerate(files):
    if keep(f):
        covered |= cov.get(i, set())
picked = []
candidates = {i: cov.get(i, set()) for i, f in enumerate(files) if not keep(f)}
while len(picked) < limit:
    best, gain = None, 0
    for i, c in candidates.items():
        g = len(c - covered)
        if g > gain:
            best, gain = i, g
    if best is None:
        break
    covered |= candidates.pop(best)
    picked.append(files[best])
data = [open(f, "rb").read() for f in picked]
for f in os.listdir(corpus):
    if not f.startswith(("seed-", "crash-")):
        os.remove(os.path.join(corpus, f))
for d in data:
    name = hashlib.sha1(d).hexdigest()
    with open(os.path.join(corpus, name), "wb") as out:
        out.write(d)
print(f"{corpus}: kept seeds/crashes + {len(picked)} inputs, {len(covered)} edges")
