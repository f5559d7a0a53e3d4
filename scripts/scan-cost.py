#!/usr/bin/env python3
# CPU time of what a migration's stop reads of a process, before and after the final round stopped
# reading smaps and the pagemap of clean memory: for migwriter pods of the given sizes (MiB, every page
# resident), the median of 7 reads of /proc/PID/smaps, /proc/PID/maps, the pagemap of its large
# mapping, and one PAGEMAP_SCAN for its pages not present. As root; needs gcc.
# Run: scripts/scan-cost.py 256 1024 4096
import ctypes, fcntl, os, struct, subprocess, sys, tempfile, time, statistics
WORK = tempfile.mkdtemp(prefix="zap-scan-cost-")
MIGWRITER = os.path.join(WORK, "migwriter")
subprocess.run(["gcc", "-O2", "-pthread", "-o", MIGWRITER, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../benches/progs/migwriter.c")], check=True)
PAGEMAP_SCAN = 0xC0606610
PAGE_IS_PRESENT = 1 << 3
def cpu(f, n=7):
    ts = []
    for _ in range(n):
        t = time.process_time(); f(); ts.append((time.process_time() - t) * 1e3)
    return statistics.median(ts)
def big_vma(pid):
    best = None
    for l in open(f"/proc/{pid}/maps"):
        a, b = [int(x, 16) for x in l.split()[0].split("-")]
        if best is None or b - a > best[1] - best[0]: best = (a, b)
    return best
def scan_not_present(fd, a, b):
    vec = (ctypes.c_uint64 * (3 * 512))()
    pos, n = a, 0
    while pos < b:
        arg = bytearray(struct.pack("12Q", 96, 0, pos, b, 0, ctypes.addressof(vec), 512, 0, PAGE_IS_PRESENT, PAGE_IS_PRESENT, 0, PAGE_IS_PRESENT))
        n += fcntl.ioctl(fd, PAGEMAP_SCAN, arg)
        pos = struct.unpack_from("Q", arg, 32)[0]
    return n
for mib in [int(x) for x in sys.argv[1:]]:
    ready = os.path.join(WORK, f"ready{mib}")
    if os.path.exists(ready): os.unlink(ready)
    p = subprocess.Popen([MIGWRITER, str(mib), "0", ready, str(47000 + mib % 1000), "3"])
    while not os.path.exists(ready): time.sleep(0.1)
    pid = p.pid
    a, b = big_vma(pid)
    pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    smaps = cpu(lambda: open(f"/proc/{pid}/smaps").read())
    maps = cpu(lambda: open(f"/proc/{pid}/maps").read())
    full = cpu(lambda: os.pread(pm, (b - a) // 4096 * 8, a // 4096 * 8))
    scan = cpu(lambda: scan_not_present(pm, a, b))
    print(f"{mib} MiB: smaps {smaps:.1f} ms, maps {maps:.2f} ms, pagemap of the mapping {full:.1f} ms, PAGEMAP_SCAN not-present {scan:.1f} ms (regions {scan_not_present(pm, a, b)}); before (smaps+pagemap) {smaps+full:.1f} ms, after (maps+scan) {maps+scan:.1f} ms", flush=True)
    os.close(pm)
    p.kill(); p.wait()
subprocess.run(["rm", "-rf", WORK])
