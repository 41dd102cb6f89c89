"""Print a SASS listing (cuobjdump -sass, e.g. from scripts/sass_dump.sh) with each instruction's
scheduling control bits decoded (sm_70 and later: the top 23 bits of the 128-bit instruction):
stall cycles, the scoreboard (SB0-SB5) a variable-latency instruction sets when its result is
written / its sources are read, and the scoreboards it waits for before it issues. Why: whether a
load's latency is exposed shows as the first instruction that waits for its scoreboard.

Usage: python scripts/sass_ctrl.py FILE.sass [FUNCTION_SUBSTRING] [LO_HEX HI_HEX]
  e.g. python scripts/sass_ctrl.py ws.sass split_kernel_wsILi128E13 37d0 3a40
(The bit layout is the public reverse-engineered one: stall [105:108], yield [109], write
scoreboard [110:112], read scoreboard [113:115], wait mask [116:121]; 7 = none.)
"""
import re
import sys


def decode(lines):
    out = []
    for k, line in enumerate(lines):
        m = re.match(r"\s*/\*([0-9a-f]{4,6})\*/\s*(.*?);\s*/\* (0x[0-9a-f]+) \*/", line)
        if not m or k + 1 >= len(lines):
            continue
        hi = re.search(r"/\* (0x[0-9a-f]+) \*/", lines[k + 1])
        if not hi:
            continue
        ctrl = int(hi.group(1), 16) >> 41
        out.append((int(m.group(1), 16), m.group(2).strip(), ctrl & 0xF, (ctrl >> 5) & 7, (ctrl >> 8) & 7,
                    (ctrl >> 11) & 0x3F))
    return out


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    lines = open(args[0]).read().split("\n")
    func = args[1] if len(args) in (2, 4) else None
    lo, hi = (int(args[-2], 16), int(args[-1], 16)) if len(args) >= 3 else (0, 1 << 32)
    if func:
        start = next((i for i, l in enumerate(lines) if "Function :" in l and func in l), None)
        if start is None:
            sys.exit(f"no function matching {func!r}")
        end = next((i for i in range(start + 1, len(lines)) if "Function :" in lines[i]), len(lines))
        lines = lines[start:end]
    for a, text, stall, wb, rb, wait in decode(lines):
        if lo <= a <= hi:
            waits = ",".join(f"SB{i}" for i in range(6) if wait >> i & 1)
            print(f"{a:05x}  {text:64s} stall={stall:2d} wr={'SB%d' % wb if wb < 6 else '-':3s} "
                  f"rd={'SB%d' % rb if rb < 6 else '-':3s} wait=[{waits}]")


if __name__ == "__main__":
    main()
