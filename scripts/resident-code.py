#!/usr/bin/env python3
"""Which crates' machine code a `vitalake` run keeps resident: the code share of its peak RSS.

    python3 scripts/resident-code.py target/release/vitalake --lake /tmp/lake ingest fhir FILE

Runs the command, reads /proc/PID/pagemap of the binary's executable mapping every 0.3 s (root, or
CAP_SYS_ADMIN, is needed to see which pages are present), and attributes every page that was
resident at any time to the crate whose code covers most of it (`nm` symbol sizes). Generic code
is attributed to the crate of its first type parameter: `core::ptr::drop_in_place<sqlparser::..>`
counts for sqlparser. A page fault on code maps its neighbours too, so a crate whose few hot
functions are spread over its text shows more than it runs.
"""

import bisect
import collections
import os
import re
import subprocess
import sys
import time

PAGE = 4096


def code_symbols(binary):
    """(address, size, name) of every function, sorted by address."""
    out = subprocess.run(["nm", "-S", "-C", binary], capture_output=True, text=True).stdout
    symbols = []
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "tT":
            try:
                symbols.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
            except ValueError:
                pass
    return sorted(symbols)


def code_segment(binary):
    """(file offset, virtual address) of the executable LOAD segment."""
    out = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields[:1] == ["LOAD"] and "E" in fields[6:-1]:
            return int(fields[1], 16), int(fields[2], 16)
    sys.exit(f"{binary}: no executable segment")


def crate_of(name):
    name = re.sub(r"^[<&* ]+(mut )?(dyn )?", "", name)
    if name.startswith(("core::", "alloc::", "std::")) and "<" in name:
        inner = re.findall(r"<[&* ]*(?:mut |dyn )?([a-z_][a-z0-9_]*)::", name)
        inner = [c for c in inner if c not in ("core", "alloc", "std")]
        if inner:
            return inner[0]
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)", name)
    return match.group(1) if match else "?"


def main():
    binary = os.path.realpath(sys.argv[1])
    symbols = code_symbols(binary)
    starts = [s[0] for s in symbols]
    file_offset, vaddr = code_segment(binary)
    child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resident, mapping = set(), None
    while child.poll() is None:
        try:
            if mapping is None:
                for line in open(f"/proc/{child.pid}/maps"):
                    fields = line.split()
                    if fields[1] == "r-xp" and fields[-1] == binary:
                        start, end = (int(x, 16) for x in fields[0].split("-"))
                        mapping = (start, end, int(fields[2], 16))
            if mapping:
                start, end, _ = mapping
                with open(f"/proc/{child.pid}/pagemap", "rb") as pagemap:
                    pagemap.seek(start // PAGE * 8)
                    entries = pagemap.read((end - start) // PAGE * 8)
                resident.update(i for i in range(len(entries) // 8) if entries[i * 8 + 7] & 0x80)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.3)
    if mapping is None:
        sys.exit("the command ended before its code was mapped")
    # The mapping starts at a page-aligned file offset; the segment's addresses are its offsets
    # shifted by (vaddr - file_offset).
    base = mapping[2] + (vaddr - file_offset)
    by_crate = collections.Counter()
    for page in resident:
        low = base + page * PAGE
        high = low + PAGE
        covered = collections.Counter()
        i = bisect.bisect_right(starts, high) - 1
        while i >= 0 and symbols[i][0] + symbols[i][1] > low - (1 << 20):
            start, size, name = symbols[i]
            overlap = min(start + size, high) - max(start, low)
            if overlap > 0:
                covered[crate_of(name)] += overlap
            i -= 1
        by_crate[covered.most_common(1)[0][0] if covered else "(no symbol)"] += PAGE
    print(f"resident code: {len(resident) * PAGE / 1e6:.1f} MB (exit {child.returncode})")
    for crate, size in by_crate.most_common(20):
        print(f"{size / 1e6:7.1f} MB  {crate}")


if __name__ == "__main__":
    main()
