#!/usr/bin/env python3
"""Plot tokens/s against sequence length from xattn_bench's Google Benchmark JSON.

    python3 scripts/plot_tokens.py results.json tokens_per_s.png

One line per family, log-log axes, from the rows of xattn on the sweep's thread count (2):
causal softmax, causal sliding window (W = 1024), sparse (the streaming layout: a sink block and a
local window of 1024 tokens), causal linear attention and lightning attention. A family whose rows
are missing from the JSON (a filtered or --xattn_full run) is left out or drawn as far as it ran.
"""
import json
import re
import sys

THREADS = 2
MIN_N, MAX_N = 1024, 131072  # the sweep's range (the JSON also holds smaller rows, for other tables)

# (label, pattern of the benchmark's name; group 1 is N)
FAMILIES = [
    ("causal softmax", r"^softmax/xattn/N:(\d+)/D:128/H:8/causal:1/threads:%d$"),
    ("sliding window W=1024, causal", r"^sliding_window/xattn/N:(\d+)/W:1024/D:128/H:8/threads:%d$"),
    ("sparse: 64 sink + 1024 window tokens",
     r"^sparse_streaming/xattn/N:(\d+)/sinks:64/window:1024/D:128/H:8/threads:%d$"),
    ("causal linear (elu+1, normalised)", r"^linear/xattn/N:(\d+)/D:128/H:8/causal:1/threads:%d$"),
    ("lightning", r"^lightning/xattn/N:(\d+)/D:128/H:8/threads:%d$"),
]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def series(benchmarks):
    """{label: [(N, tokens/s)]} from the iteration rows (or medians, when there are repetitions)."""
    out = {}
    for label, pattern in FAMILIES:
        # run_name may go on with Google Benchmark's /min_time:.../real_time, but not with
        # /dtype:...: the 16-bit rows of the same shape are not the plot's fp32 line
        rx = re.compile((pattern % THREADS).rstrip("$") + "(?!/dtype:)(?:/|$)")
        points = {}
        for b in benchmarks:
            if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
                continue
            m = rx.match(b.get("run_name", b["name"]))
            if m and "tokens_per_s" in b and MIN_N <= int(m.group(1)) <= MAX_N:
                if b.get("run_type") == "aggregate" or int(m.group(1)) not in points:
                    points[int(m.group(1))] = b["tokens_per_s"]
        if points:
            out[label] = sorted(points.items())
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        import matplotlib
    except ImportError:
        sys.exit("plot_tokens.py: needs matplotlib (Debian: apt-get install python3-matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(sys.argv[1]) as f:
        data = series(json.load(f).get("benchmarks", []))
    if not data:
        sys.exit("plot_tokens.py: no tokens/s rows of the sweep in " + sys.argv[1])

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    markers = "osD^v"
    for (label, points), marker in zip(data.items(), markers):
        ns = [n for n, _ in points]
        if label == "causal softmax" and ns[-1] < 131072:
            label += " (to %dk only: its O(N²) time)" % (ns[-1] // 1024)
        ax.plot(ns, [t for _, t in points], marker=marker, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = [MIN_N << i for i in range((MAX_N // MIN_N).bit_length())]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["%dk" % (t // 1024) for t in ticks])
    ax.set_xlabel("sequence length N (tokens)")
    ax.set_ylabel("tokens/s = N / time of one forward call\n(B=1, H=8, d=128, fp32)")
    ax.set_title("xattn: tokens/s against sequence length\n%s, %d threads" % (cpu_model(), THREADS))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(sys.argv[2])
    print("plot_tokens.py: wrote " + sys.argv[2])


if __name__ == "__main__":
    main()
