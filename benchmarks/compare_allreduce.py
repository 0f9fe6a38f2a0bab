#!/usr/bin/python3
"""skyring's allreduce beside Open MPI and Gloo, n = 2 and n = 4, one table.

    python3 benchmarks/compare_allreduce.py --build build-rel [--repeat 3] [--ranks 2 4]

Runs, for each world size, `mpirun allreduce_perf --peer mpi` (skyring and MPI_Allreduce on
the same buffers in the same run) and benchmarks/gloo_allreduce_perf.py (Gloo through
torch.distributed), --repeat times each, and prints per size the medians of skyring's time
and busbw and skyring's speed relative to each peer (peer time / skyring time: above 1
means skyring is faster). It also measures the shared-memory link itself with
ucx_perftest (tag_bw and tag_lat over UCX_TLS=sm), for the "fraction of the link" column.
Gloo needs Debian's python3-torch; without it those columns say n/a.

Sizes up to --split (64 KiB) take microseconds, so they run as a separate sweep with
--small-n iterations (1000): with 10, one rank that happens to be descheduled once
decides the mean.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROW = re.compile(r"^\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)(.*)$")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def run(cmd, timeout):
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out.stdout


def parse(text):
    rows = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if not m:
            continue
        size = int(m.group(1))
        rest = m.group(7).split()
        rows[size] = {"time": float(m.group(3)), "busbw": float(m.group(5)),
                      "wrong": int(m.group(6)),
                      "mpi_time": float(rest[0]) if len(rest) >= 3 else None,
                      "mpi_busbw": float(rest[1]) if len(rest) >= 3 else None}
    return rows


def perftest(test, size, tls):
    """Runs ucx_perftest's server and client on loopback; returns the client's summary."""
    env = dict(ENV, UCX_TLS=tls)
    port = str(13000 + os.getpid() % 1000)
    server = subprocess.Popen(["ucx_perftest", "-p", port], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["ucx_perftest", "127.0.0.1", "-p", port, "-t", test, "-s",
                              str(size), "-n", "2000" if size < 65536 else "200"],
                             env=env, capture_output=True, text=True, timeout=60)
        return out.stdout
    finally:
        server.kill()
        server.wait()


def ucx_link():
    """(bandwidth MB/s at 16 MiB, one-way latency us at 8 B) over shared memory, or None."""
    try:
        bw = perftest("tag_bw", 16 << 20, "sm,self")
        lat = perftest("tag_lat", 8, "sm,self")
    except (OSError, subprocess.TimeoutExpired):
        return None
    # Final line: "Final: <iters> <lat typical> <lat avg> <lat overall> <bw avg> <bw overall> ..."
    def final(text):
        for line in text.splitlines():
            if line.strip().startswith("Final:"):
                return [float(x) for x in line.split()[1:]]
        return None
    b, l = final(bw), final(lat)
    if not b or not l:
        return None
    return b[4], l[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default="build-rel")
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("-b", default="8")
    p.add_argument("-e", default="256M")
    p.add_argument("-f", default="4")
    p.add_argument("-n", default="10")
    p.add_argument("-w", default="3")
    p.add_argument("--split", default="64K", help="largest size of the latency sweep")
    p.add_argument("--small-n", default="1000")
    p.add_argument("--small-w", default="100")
    a = p.parse_args()
    split = int(a.split[:-1]) * {"K": 1 << 10, "M": 1 << 20}[a.split[-1]] \
        if a.split[-1] in "KM" else int(a.split)
    sweeps = [(a.b, a.split, a.small_n, a.small_w), (str(2 * split), a.e, a.n, a.w)]
    perf = os.path.join(a.build, "benchmarks", "allreduce_perf")
    gloo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gloo_allreduce_perf.py")
    have_torch = subprocess.run(["/usr/bin/python3", "-c", "import torch"],
                                capture_output=True).returncode == 0
    link = ucx_link()
    link_gbs = link[0] * 1.048576 / 1e3 if link else None  # ucx_perftest's MB/s are MiB/s
    if link:
        print(f"# ucx_perftest over shared memory (UCX_TLS=sm): tag_bw {link_gbs:.2f} GB/s "
              f"at 16 MiB, tag_lat {link[1]:.2f} us one way at 8 B")
    for n in a.ranks:
        sky, gl = [], []
        for _ in range(a.repeat):
            s_rows, g_rows = {}, {}
            for b, e, iters, warm in sweeps:
                s_rows.update(parse(run(["mpirun", "-np", str(n), "--oversubscribe", perf, "-b", b,
                                         "-e", e, "-f", a.f, "-n", iters, "-w", warm, "-c", "1",
                                         "--peer", "mpi"], 1800)))
                if have_torch:
                    g_rows.update(parse(run(["/usr/bin/python3", gloo, "--ranks", str(n), "-b", b,
                                             "-e", e, "-f", a.f, "-n", iters, "-w", warm], 1800)))
            sky.append(s_rows)
            if have_torch:
                gl.append(g_rows)
        print(f"\n## n = {n} (medians of {a.repeat} runs; ratio = peer time / skyring time)\n")
        print("| size | skyring us | skyring busbw GB/s | vs MPI | vs Gloo | MPI busbw | "
              "Gloo busbw | busbw / link |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in sorted(sky[0]):
            med = lambda runs, key: statistics.median(r[size][key] for r in runs if size in r)
            t, bus = med(sky, "time"), med(sky, "busbw")
            wrong = sum(r[size]["wrong"] for r in sky if size in r)
            mt, mb = med(sky, "mpi_time"), med(sky, "mpi_busbw")
            gt = med(gl, "time") if gl else None
            gb = med(gl, "busbw") if gl else None
            frac = f"{bus / link_gbs:.2f}" if link else "n/a"
            label = f"{size} B" if size < 1024 else (f"{size >> 10} KiB" if size < (1 << 20)
                                                      else f"{size >> 20} MiB")
            print(f"| {label} | {t:.2f} | {bus:.3f} | {mt / t:.2f} | "
                  f"{(gt / t) if gt else float('nan'):.2f} | {mb:.3f} | "
                  f"{gb if gb is not None else float('nan'):.3f} | {frac} |"
                  + (f" {wrong} WRONG" if wrong else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
