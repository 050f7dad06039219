#!/usr/bin/env python3
"""Which code of a running ricochet is resident, by crate.

    scripts/resident-code.py PID [--top N]

Reads /proc/PID/maps and /proc/PID/pagemap (root) to find the resident pages of the
process's own executable mapping, and the binary's symbol table (`nm`) to name the code on
each page. Prints, per crate (the first path segment of a Rust symbol; `librdkafka` for
`rd_*` C symbols, `C` for other C symbols), the size of its code in the binary and how
much of it is resident. A page shared by several crates counts for the crate with the most
bytes on it. Resident is not the same as run: the kernel maps up to 64 KiB of cached file
pages around each fault (fault-around), so code next to code that ran counts too.
"""
import argparse
import bisect
import re
import struct
import subprocess
import sys
from collections import defaultdict

PAGE = 4096


def executable_mappings(pid):
    exe = subprocess.run(["readlink", f"/proc/{pid}/exe"], capture_output=True, text=True).stdout.strip()
    maps = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == exe and "x" in parts[1]:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                maps.append((start, end, int(parts[2], 16)))
    return exe, maps


def text_segment(exe):
    """(p_offset, p_vaddr) of the executable PT_LOAD."""
    out = subprocess.run(["readelf", "-lW", exe], capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD" and "E" in "".join(fields[6:-1]):
            return int(fields[1], 16), int(fields[2], 16)
    sys.exit("no executable LOAD segment")


def crate_of(name):
    if name.startswith("rd_"):
        return "librdkafka"
    if "::" not in name:
        return "C"
    if name.startswith("<"):
        name = name[1:]
        name = re.sub(r"^(&|dyn |\*const |\*mut |mut )+", "", name)
    head = re.split(r"::|<| as |\[", name, maxsplit=1)[0].strip()
    return head or "?"


def symbols(exe):
    out = subprocess.run(["nm", "-n", "-S", "-C", "--defined-only", exe], capture_output=True, text=True).stdout
    syms = []
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]+) ([0-9a-f]+) [tTwW] (.*)$", line)
        if m:
            syms.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3)))
    return syms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pid", type=int)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    exe, maps = executable_mappings(args.pid)
    p_offset, p_vaddr = text_segment(exe)
    syms = symbols(exe)
    starts = [s[0] for s in syms]
    size_by_crate = defaultdict(int)
    for _, size, name in syms:
        size_by_crate[crate_of(name)] += size
    resident_by_crate = defaultdict(int)
    resident = total = 0
    with open(f"/proc/{args.pid}/pagemap", "rb") as pm:
        for start, end, pgoff in maps:
            for addr in range(start, end, PAGE):
                total += PAGE
                pm.seek(addr // PAGE * 8)
                (entry,) = struct.unpack("<Q", pm.read(8))
                if not entry >> 63 & 1:
                    continue
                resident += PAGE
                vaddr = addr - start + pgoff - p_offset + p_vaddr
                owners = defaultdict(int)
                i = max(bisect.bisect_right(starts, vaddr) - 1, 0)
                while i < len(syms) and syms[i][0] < vaddr + PAGE:
                    s, size, name = syms[i]
                    overlap = min(s + size, vaddr + PAGE) - max(s, vaddr)
                    if overlap > 0:
                        owners[crate_of(name)] += overlap
                    i += 1
                owner = max(owners, key=owners.get) if owners else "(no symbol)"
                resident_by_crate[owner] += PAGE
    print(f"{exe}: executable mapping {total / 1024:,.0f} kB, resident {resident / 1024:,.0f} kB")
    print(f"{'crate':<28} {'code kB':>9} {'resident kB':>12}")
    ranked = sorted(resident_by_crate.items(), key=lambda kv: -kv[1])
    for crate, kb in ranked[: args.top]:
        print(f"{crate:<28} {size_by_crate.get(crate, 0) / 1024:>9,.0f} {kb / 1024:>12,.0f}")
    rest = sum(kb for _, kb in ranked[args.top:])
    print(f"{'(the rest)':<28} {'':>9} {rest / 1024:>12,.0f}")


if __name__ == "__main__":
    main()
