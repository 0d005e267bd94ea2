// bench/main.cpp — xattn_bench's main: registers the benchmarks of the headline suite (the
// default) or of the full suite (--xattn_full), peaks first, runs them with Google Benchmark's
// usual flags, and then prints the headline table: each family at its headline shape, xattn beside
// the naive reference and the Eigen baseline, the time ratios, and xattn's share of the measured
// peak; below each fp32 row, the same shape with bfloat16 and half storage and their speedup over
// fp32. The full suite prints, before it, one comparison table per family.
//
// Into --xattn_out=DIR (default bench-results/) go the run's Google Benchmark JSON (results.json,
// unless --benchmark_out names another file), the headline table in Markdown (table.md), and the
// tokens/s plot (tokens_per_s.png, drawn by scripts/plot_tokens.py when python3 can run it).
//
// Where the table goes: with the console format in the headline suite, Google Benchmark's rows go
// to stderr (progress) and the table to stdout; in the full suite both go to stdout; with
// --benchmark_format=json the JSON on stdout stays untouched and the tables go to stderr; with csv
// there is no table.
#include "bench_common.hpp"

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace xattn_bench {
namespace {

// A benchmark name "family/impl/key:value/..." split into its parts.
struct parsed_name {
  std::string family, impl;
  std::vector<std::pair<std::string, std::string>> args;
};

std::optional<parsed_name> parse(const std::string& name) {
  std::vector<std::string> parts;
  std::stringstream in(name);
  for (std::string p; std::getline(in, p, '/');) parts.push_back(p);
  if (parts.size() < 2) return std::nullopt;
  parsed_name r{parts[0], parts[1], {}};
  for (std::size_t i = 2; i < parts.size(); ++i) {
    const auto colon = parts[i].find(':');
    if (colon == std::string::npos) return std::nullopt;
    r.args.emplace_back(parts[i].substr(0, colon), parts[i].substr(colon + 1));
  }
  return r;
}

struct result {
  double ms = 0;  // real time per iteration
  benchmark::UserCounters counters;
  std::string label;  // 16-bit rows: "path:<the product path they ran on>"
  bool from_median = false;
};

// The impls of a comparison row, in column order; xattn's speedups are over the others.
const char* const kImpls[] = {"naive", "eigen", "xattn"};

std::string fmt(const char* f, double a, double b = 0) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a, b);
  return buf;
}

// The headline table's rows: the benchmark names of each family's headline shape. naive_xattn is
// xattn at the naive reference's shape where that is smaller than the headline shape (the naive
// references take seconds per call at N = 1024 already): the "x naive" ratio is taken there.
struct headline_row {
  std::string family, shape;
  std::string xattn, naive, naive_xattn, eigen;  // names; empty: no such row
  std::string naive_shape;                        // where naive ran, if not at the headline shape
  std::string fp32 = {};                          // 16-bit lines: the fp32 row their "vs fp32" is over
};

std::vector<headline_row> headline_rows() {
  const std::string t = "/threads:" + std::to_string(kTableThreads);
  const std::string sm = "softmax/", tail = "/D:128/H:8/";
  std::vector<headline_row> rows;
  for (const char* causal : {"0", "1"}) {
    const std::string c = std::string("causal:") + causal;
    rows.push_back({causal[0] == '0' ? "softmax, dense" : "softmax, causal", "N=4096 d=128 H=8",
                    sm + "xattn/N:4096" + tail + c + t, sm + "naive/N:512" + tail + c + "/threads:1",
                    sm + "xattn/N:512" + tail + c + t, sm + "eigen/N:4096" + tail + c + t, "N=512"});
  }
  rows.push_back({"decode", "1 token, 32 q / 8 kv heads, 32768 keys", "softmax_decode/xattn/K:32768" + t,
                  "softmax_decode/naive/K:32768/threads:1", "", "softmax_decode/eigen/K:32768" + t, ""});
  rows.push_back({"sliding window", "N=16384 W=1024 causal", "sliding_window/xattn/N:16384/W:1024/D:128/H:8" + t,
                  "sliding_window/naive/N:1024/W:256/D:128/H:8/threads:1", "sliding_window/xattn/N:1024/W:256/D:128/H:8" + t,
                  "", "N=1024 W=256"});
  rows.push_back({"sparse, BigBird 10 %", "N=16384 blocks of 64", "sparse/xattn/N:16384/density:10/D:128/H:8" + t,
                  "sparse/naive/N:1024/density:10/D:128/H:8/threads:1", "sparse/xattn/N:1024/density:10/D:128/H:8" + t,
                  "", "N=1024"});
  rows.push_back({"linear, causal", "N=16384 elu+1, normalised", "linear/xattn/N:16384/D:128/H:8/causal:1" + t,
                  "linear/naive/N:2048/D:128/H:8/causal:1/threads:1", "linear/xattn/N:2048/D:128/H:8/causal:1" + t, "",
                  "N=2048"});
  rows.push_back({"lightning", "N=16384 d=128 H=8", "lightning/xattn/N:16384/D:128/H:8" + t,
                  "lightning/naive/N:2048/D:128/H:8/threads:1", "lightning/xattn/N:2048/D:128/H:8" + t, "", "N=2048"});
  rows.push_back({"2-D neighborhood", "128x128 image, kernel 13", "neighborhood2d/xattn/img:128/K:13/D:128/H:8" + t,
                  "neighborhood2d/naive/img:64/K:13/D:128/H:8/threads:1", "neighborhood2d/xattn/img:64/K:13/D:128/H:8" + t,
                  "", "64x64"});
  // The backward passes (dq, dk, dv from dout, out and lse), at their forward's shapes.
  rows.push_back({"backward: softmax", "N=4096 d=128 H=8 dense", "softmax_backward/xattn/N:4096" + tail + "causal:0" + t,
                  "", "", "", ""});
  rows.push_back({"backward: causal", "N=4096 d=128 H=8 causal", "softmax_backward/xattn/N:4096" + tail + "causal:1" + t,
                  "", "", "", ""});
  rows.push_back({"backward: causal + bias, ALiBi", "N=4096 bias [1,1,N,N]",
                  "softmax_backward/xattn/N:4096" + tail + "causal:1" + t + "/bias:1", "", "", "", ""});
  rows.push_back({"  and their gradients", "also dbias, dslopes",
                  "softmax_backward/xattn/N:4096" + tail + "causal:1" + t + "/bias:1/score_grads:1", "", "", "", ""});
  rows.push_back({"backward: window", "N=16384 W=1024 causal",
                  "sliding_window_backward/xattn/N:16384/W:1024/D:128/H:8" + t, "", "", "", ""});
  rows.push_back({"backward: sparse", "N=16384 BigBird 10 %", "sparse_backward/xattn/N:16384/density:10/D:128/H:8" + t,
                  "", "", "", ""});
  rows.push_back({"backward: 2-D", "128x128 image, kernel 13", "neighborhood2d_backward/xattn/img:128/K:13/D:128/H:8" + t,
                  "", "", "", ""});
  rows.push_back({"backward: lightning", "N=16384 d=128 H=8", "lightning_backward/xattn/N:16384/D:128/H:8" + t, "", "",
                  "", ""});
  rows.push_back({"backward: linear", "N=16384 elu+1, normalised", "linear_backward/xattn/N:16384/D:128/H:8/causal:1" + t,
                  "", "", "", ""});
  // Below each row, its shape with 16-bit storage (decode: the K/V cache; its queries stay float).
  std::vector<headline_row> with16;
  for (const auto& r : rows) {
    with16.push_back(r);
    if (r.xattn.find("_backward/") != std::string::npos) continue;  // float only
    const bool decode = r.xattn.rfind("softmax_decode/", 0) == 0;
    for (storage st : kStorages16) {
      const std::string what = std::string(decode ? "K/V cache in " : "q, k, v in ") + storage_name(st);
      with16.push_back({std::string("  ") + storage_name(st), what, r.xattn + dtype_suffix(st), "", "", "", "", r.xattn});
    }
  }
  return with16;
}

/// Collects the results of every run, and prints the tables on Finalize: the per-family comparison
/// tables when `full`, then the headline table (and writes it, in Markdown, to `markdown`).
template <class Base>
class comparison_reporter : public Base {
 public:
  template <class... A>
  comparison_reporter(std::ostream& table, bool full, std::string markdown, A&&... a)
      : Base(std::forward<A>(a)...), table_(table), full_(full), markdown_(std::move(markdown)) {}

  /// Whether any benchmark reported (not so with --benchmark_list_tests or a filter matching none).
  bool ran() const { return !results_.empty(); }

  void ReportRuns(const std::vector<benchmark::BenchmarkReporter::Run>& runs) override {
    Base::ReportRuns(runs);
    for (const auto& r : runs) {
      if (r.error_occurred) continue;
      const bool median = r.run_type == benchmark::BenchmarkReporter::Run::RT_Aggregate;
      if (median && r.aggregate_name != "median") continue;  // with repetitions: the median
      auto& slot = results_[r.run_name.function_name];
      if (slot.from_median && !median) continue;
      const double to_ms = 1e3 / benchmark::GetTimeUnitMultiplier(r.time_unit);
      slot = {r.GetAdjustedRealTime() * to_ms, r.counters, r.report_label, median};
    }
  }

  void Finalize() override {
    Base::Finalize();
    if (results_.empty()) return;
    if (full_) print_tables();
    print_headline(table_, false);
    print_peaks(table_);
    table_.flush();
    if (markdown_.empty()) return;
    std::ofstream md(markdown_);
    print_headline(md, true);
    if (!md) std::cerr << "xattn_bench: could not write " << markdown_ << "\n";
  }

 private:
  struct row {
    std::vector<std::pair<std::string, std::string>> args;
    std::map<std::string, const result*> impls;
  };

  void print_tables() {
    // Families with 16-bit rows get a dtype column: their fp32 rows, named without one, read fp32.
    std::set<std::string> with_dtype;
    for (const auto& [name, res] : results_)
      if (auto p = parse(name); p && !p->args.empty() && p->args.back().first == "dtype") with_dtype.insert(p->family);
    // family → rows in first-seen (= registration) order, keyed by their argument string.
    std::map<std::string, std::vector<row>> families;
    std::vector<std::string> family_order;
    std::map<std::string, std::map<std::string, std::size_t>> row_index;
    for (const auto& [name, res] : results_) {
      auto p = parse(name);
      if (!p || p->family == "peak") continue;
      if (with_dtype.count(p->family) && (p->args.empty() || p->args.back().first != "dtype"))
        p->args.emplace_back("dtype", "fp32");
      if (!families.count(p->family)) family_order.push_back(p->family);
      auto& rows = families[p->family];
      std::string key;
      for (const auto& [k, v] : p->args) key += k + ":" + v + "/";
      auto [it, fresh] = row_index[p->family].try_emplace(key, rows.size());
      if (fresh) rows.push_back({p->args, {}});
      rows[it->second].impls[p->impl] = &res;
    }
    std::ostream& os = table_;
    os << "\n";
    for (const auto& f : family_order) print_family(os, f, families[f]);
    print_chunk_summary(os);
  }

  // One table per family: argument columns, then per impl "rate (pct)", then xattn's speedups.
  // Families with GFLOPS compare compute (pct of the FMA peak); with GBps, bandwidth.
  static void print_family(std::ostream& os, const std::string& family, std::vector<row>& rows) {
    const bool flops = rows.front().impls.begin()->second->counters.count("GFLOPS") > 0;
    const char* rate = flops ? "GFLOPS" : "GBps";
    const char* pct = flops ? "pct_peak" : "pct_bw";
    std::vector<std::string> impls;
    for (const char* i : kImpls)
      for (const auto& r : rows)
        if (r.impls.count(i)) {
          impls.push_back(i);
          break;
        }
    std::sort(rows.begin(), rows.end(), [](const row& a, const row& b) { return numeric_less(a.args, b.args); });

    // Arguments with one value on every row go to the title instead of a column.
    std::vector<bool> varies(rows.front().args.size(), false);
    std::string fixed;
    for (std::size_t a = 0; a < varies.size(); ++a) {
      for (const auto& r : rows) varies[a] = varies[a] || a >= r.args.size() || r.args[a] != rows.front().args[a];
      if (!varies[a]) fixed += " " + rows.front().args[a].first + "=" + rows.front().args[a].second;
    }
    os << family << (fixed.empty() ? "" : " (" + fixed.substr(1) + ")") << ": "
       << (flops ? "GFLOPS (% of FMA peak)" : "GB/s of K/V read (% of read bandwidth)") << ", speedup = time ratio\n";
    std::string head;
    for (std::size_t a = 0; a < varies.size(); ++a)
      if (varies[a]) head += pad_left(rows.front().args[a].first, width_of(rows.front().args[a].first));
    head += " ";
    for (const auto& i : impls) head += pad_left(i, kCell);
    for (const auto& i : impls)
      if (i != "xattn" && std::count(impls.begin(), impls.end(), "xattn")) head += pad_left("x/" + i, kSpeedup);
    os << head << "\n" << std::string(head.size(), '-') << "\n";
    for (const auto& r : rows) {
      std::string line;
      for (std::size_t a = 0; a < r.args.size(); ++a)
        if (a >= varies.size() || varies[a]) line += pad_left(r.args[a].second, width_of(r.args[a].first));
      line += " ";
      for (const auto& i : impls) {
        auto it = r.impls.find(i);
        line += pad_left(it == r.impls.end() ? "-" : cell(*it->second, rate, pct), kCell);
      }
      const auto x = r.impls.find("xattn");
      for (const auto& i : impls) {
        if (i == "xattn" || !std::count(impls.begin(), impls.end(), "xattn")) continue;
        const auto o = r.impls.find(i);
        line += pad_left(x == r.impls.end() || o == r.impls.end() ? "-" : fmt("%.2fx", o->second->ms / x->second->ms), kSpeedup);
      }
      os << line << "\n";
    }
    os << "\n";
  }

  // The chunk families' ratios (bench_linear.cpp), at D = 128, H = 8, per N and thread count:
  // lightning's tokens/s, that over its tokens/s at N = 2048 (constant speed), its speedup over
  // causal softmax (time ratio), causal linear's tokens/s over lightning's; then, at H = 2 and
  // H = 1 and N = 65536, two threads over one. Printed when lightning/xattn ran.
  void print_chunk_summary(std::ostream& os) const {
    auto tokens = [](const result* r) {
      const auto it = r->counters.find("tokens_per_s");
      return it == r->counters.end() ? 0.0 : it->second.value;
    };
    std::map<std::pair<long, int>, const result*> light;  // (N, threads) → lightning/xattn at H = 8
    for (const auto& [name, res] : results_) {
      auto p = parse(name);
      if (!p || p->family != "lightning" || p->impl != "xattn") continue;
      std::map<std::string, std::string> a(p->args.begin(), p->args.end());
      if (a["D"] == "128" && a["H"] == "8") light[{std::stol(a["N"]), std::stoi(a["threads"])}] = &res;
    }
    if (light.empty()) return;
    os << "lightning/xattn (D=128 H=8): tokens/s; vs N=2048 = tokens/s ratio; x softmax = time ratio over causal "
          "softmax/xattn; linear/lightning = causal linear/xattn tokens/s over lightning's\n";
    os << "       N threads     tokens/s   vs N=2048   x softmax   linear/lightning\n"
       << std::string(72, '-') << "\n";
    for (const auto& [key, res] : light) {
      const auto [n, t] = key;
      const std::string tail = "/N:" + std::to_string(n) + "/D:128/H:8/";
      const result* base = light.count({2048, t}) ? light.at({2048, t}) : nullptr;
      const result* soft = find("softmax/xattn" + tail + "causal:1/threads:" + std::to_string(t));
      const result* lin = find("linear/xattn" + tail + "causal:1/threads:" + std::to_string(t));
      os << pad_left(std::to_string(n), 8) << pad_left(std::to_string(t), 8)
         << pad_left(fmt("%.1fk", tokens(res) / 1e3), 13)
         << pad_left(base ? fmt("%.2f", tokens(res) / tokens(base)) : "-", 12)
         << pad_left(soft ? fmt("%.1fx", soft->ms / res->ms) : "-", 12)
         << pad_left(lin ? fmt("%.2f", tokens(lin) / tokens(res)) : "-", 19) << "\n";
    }
    for (const char* h : {"2", "1"}) {
      const std::string head = std::string("lightning/xattn/N:65536/D:128/H:") + h + "/threads:";
      const result *one = find(head + "1"), *two = find(head + "2");
      if (one && two) os << "lightning/xattn N=65536 D=128 H=" << h << ": 2 threads / 1 thread = " << fmt("%.2fx", one->ms / two->ms) << "\n";
    }
    os << "\n";
  }

  // The headline table, in the console's columns or as a Markdown table, with its footnotes.
  void print_headline(std::ostream& os, bool markdown) const {
    auto ms = [](double v) { return v >= 100 ? fmt("%.0f", v) : v >= 10 ? fmt("%.1f", v) : fmt("%.2f", v); };
    auto counter = [](const result* r, const char* c) {
      const auto it = r->counters.find(c);
      return it == r->counters.end() ? -1.0 : it->second.value;
    };
    const std::vector<std::string> head = {"family", "shape", "xattn ms", "naive ms", "eigen ms",
                                           "x naive", "x eigen", "vs fp32", "% peak"};
    const std::string mark = markdown ? " \\*" : " *";  // a bare * would start emphasis or a list in Markdown
    const std::string amx = std::string("path:") + xattn::path_name(xattn::product_path::amx_bf16);
    const std::string dot = std::string("path:") + xattn::path_name(xattn::product_path::avx512_bf16);
    std::vector<std::vector<std::string>> cells;
    for (const auto& h : headline_rows()) {
      const result* x = find(h.xattn);
      if (!x && !h.fp32.empty()) continue;  // a 16-bit line whose row did not run (a filter)
      const result* n = h.naive.empty() ? nullptr : find(h.naive);
      const result* nx = h.naive_xattn.empty() ? x : find(h.naive_xattn);
      const result* e = h.eigen.empty() ? nullptr : find(h.eigen);
      const result* f = h.fp32.empty() ? nullptr : find(h.fp32);
      const bool on_amx = x && x->label == amx, on_dot = x && x->label == dot;
      std::string peak = "-";
      if (x) {
        const double bw = counter(x, "pct_bw"), fl = counter(x, "pct_peak");
        peak = bw >= 0 ? fmt("%.1f bw", bw) : fl >= 0 ? fmt("%.1f", fl) + (on_amx ? " amx" : on_dot ? " dot" : "") : "-";
      }
      const std::string shape =
          h.shape + (on_amx ? ", AMX" : on_dot ? ", AVX512-BF16" : !h.fp32.empty() ? ", fp32 units" : "");
      cells.push_back({h.family, shape, x ? ms(x->ms) : "-",
                       n ? ms(n->ms) + (h.naive_shape.empty() ? "" : " @" + h.naive_shape + mark) : "-",
                       e ? ms(e->ms) : "-", n && nx ? fmt("%.0fx", n->ms / nx->ms) : "-",
                       e && x ? fmt("%.2fx", e->ms / x->ms) : "-", f && x ? fmt("%.2fx", f->ms / x->ms) : "-", peak});
    }
    std::vector<std::size_t> w(head.size());
    for (std::size_t c = 0; c < head.size(); ++c) {
      w[c] = head[c].size();
      for (const auto& r : cells) w[c] = std::max(w[c], r[c].size());
    }
    auto line = [&](const std::vector<std::string>& r) {
      std::string out = markdown ? "|" : "";
      for (std::size_t c = 0; c < r.size(); ++c) {
        const std::string pad(w[c] - r[c].size(), ' ');
        const std::string cell = c < 2 ? r[c] + pad : pad + r[c];  // text left, numbers right
        out += markdown ? " " + cell + " |" : (c ? "  " : "") + cell;
      }
      return out + "\n";
    };
    const std::string threads = std::to_string(kTableThreads);
    os << (markdown ? "# " : "\n") << "xattn_bench: each family at its headline shape, B=1, fp32 (16-bit lines below), "
       << "xattn on " << threads << " threads\n\n";
    os << line(head);
    if (markdown) {
      os << "|";
      for (std::size_t c = 0; c < head.size(); ++c) os << (c < 2 ? ":" : "-") << std::string(w[c], '-') << (c < 2 ? "-|" : ":|");
      os << "\n";
    } else {
      std::size_t total = 0;
      for (auto x : w) total += x + 2;
      os << std::string(total - 2, '-') << "\n";
    }
    for (const auto& r : cells) os << line(r);
    const char* bullet = markdown ? "- " : "  ";
    const std::string more = markdown ? " " : "\n    ";  // the console's lines stay under 100 columns
    os << "\n"
       << bullet << "xattn ms, naive ms, eigen ms: wall time of one call; naive is the fp64 reference" << more
       << "(xattn::reference) on one thread, eigen is Eigen GEMMs and an explicit softmax (softmax, decode).\n"
       << bullet << "x naive = naive time / xattn time at the naive's shape; x eigen = eigen time / xattn time.\n"
       << bullet << mark.substr(1) << " the naive reference takes seconds per call (it materialises N x N), so it ran once" << more
       << "at the smaller shape shown; its ratio is to xattn (" << threads << " threads) at that shape.\n"
       << bullet << "% peak: xattn's GFLOPS (visited pairs only) over the FMA peak measured first" << more
       << "(peak/fma); \"bw\": decode's K/V bytes read per second over the measured read bandwidth.\n"
       << bullet << "bf16, f16: the row above with q, k, v (decode: the K/V cache) in Eigen::bfloat16 or" << more
       << "Eigen::half, out float; vs fp32 = fp32 time / 16-bit time. \"AMX\": the products ran on" << more
       << "AMX-BF16 tiles, and % peak is over the AMX peak (peak/amx_bf16, \"amx\"); \"AVX512-BF16\": on" << more
       << "vdpbf16ps dot products, % peak over their peak (peak/bf16_dot, \"dot\"); \"fp32 units\": the" << more
       << "16-bit rows were widened to float, % peak over the FMA peak; decode's bw counts the 2-byte" << more
       << "elements it read.\n";
    // A training step (forward and backward) at N = 32768: lightning against causal softmax.
    const std::string n32 = "/N:32768/D:128/H:8", t2 = "/threads:" + threads;
    const result *lf = find("lightning/xattn" + n32 + t2), *lb = find("lightning_backward/xattn" + n32 + t2),
                 *sf = find("softmax/xattn" + n32 + "/causal:1" + t2), *sb = find("softmax_backward/xattn" + n32 + "/causal:1" + t2);
    if (lf && lb && sf && sb)
      os << bullet << "training step at N=32768 (forward + backward): lightning " << ms(lf->ms + lb->ms)
         << " ms, causal softmax " << ms(sf->ms + sb->ms) << " ms: " << fmt("%.0fx", (sf->ms + sb->ms) / (lf->ms + lb->ms))
         << " faster.\n";
    if (markdown) {
      auto peak = [&](const double* slot) {
        return slot[kTableThreads] > 0 ? fmt("%.1f GFLOPS", slot[kTableThreads]) : std::string("not measured");
      };
      os << bullet << "measured peaks at " << threads << " threads: FMA " << peak(fma_peak_gflops) << ", bf16 dot "
         << peak(bf16_dot_peak_gflops) << ", AMX-BF16 " << peak(amx_bf16_peak_gflops) << ", read bandwidth "
         << (bandwidth_gbs[kTableThreads] > 0 ? fmt("%.1f GB/s", bandwidth_gbs[kTableThreads]) : "not measured") << ".\n";
    }
    os << "\n";
  }

  /// The result of the benchmark named `name` (without its min_time/real_time suffixes), or null.
  const result* find(const std::string& name) const {
    const auto it = results_.find(name);
    return it == results_.end() ? nullptr : &it->second;
  }

  static void print_peaks(std::ostream& os) {
    os << "measured peaks (pct_peak and pct_bw are relative to these):\n";
    auto gflops = [](double v) { return v > 0 ? fmt("%7.1f GFLOPS", v) : std::string("   not measured"); };
    for (int t = 1; t <= kMaxThreads; ++t) {
      os << "  threads:" << t << "  FMA " << gflops(fma_peak_gflops[t]) << "   read bandwidth "
         << (bandwidth_gbs[t] > 0 ? fmt("%5.1f GB/s", bandwidth_gbs[t]) : std::string("not measured")) << "\n"
         << "             bf16 dot " << gflops(bf16_dot_peak_gflops[t]) << "   AMX-BF16 "
         << gflops(amx_bf16_peak_gflops[t]) << "\n";
    }
  }


  static std::string cell(const result& r, const char* rate, const char* pct) {
    const auto a = r.counters.find(rate), b = r.counters.find(pct);
    if (a == r.counters.end()) return "?";
    if (b == r.counters.end()) return fmt("%.1f", a->second.value);
    return fmt(a->second.value < 10 ? "%.2f (%4.1f%%)" : "%.1f (%4.1f%%)", a->second.value, b->second.value);
  }

  // Column widths: 4 argument columns, 3 impls and 2 speedups fit in 100 columns.
  static constexpr int kCell = 16, kSpeedup = 9;
  static int width_of(const std::string& key) { return std::max<int>(int(key.size()) + 1, 6); }
  static std::string pad_left(const std::string& s, int w) {
    return s.size() >= std::size_t(w) ? " " + s : std::string(w - s.size(), ' ') + s;
  }
  // Rows sorted by their arguments, numerically where both values are numbers.
  static bool numeric_less(const std::vector<std::pair<std::string, std::string>>& a,
                           const std::vector<std::pair<std::string, std::string>>& b) {
    for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
      const auto& x = a[i].second;
      const auto& y = b[i].second;
      char *ex, *ey;
      const double dx = std::strtod(x.c_str(), &ex), dy = std::strtod(y.c_str(), &ey);
      if (*ex == 0 && *ey == 0 && !x.empty() && !y.empty()) {
        if (dx != dy) return dx < dy;
      } else if (x != y) {
        return x < y;
      }
    }
    return a.size() < b.size();
  }

  std::ostream& table_;
  bool full_;
  std::string markdown_;
  std::map<std::string, result> results_;
};

// Google Benchmark keeps its flags private, so the few that choose the display reporter are read
// here, the same way the library reads them: --flag=value on the command line, else $FLAG.
std::string flag(int argc, char** argv, const char* name, const char* fallback) {
  std::string env_name = name;
  for (auto& c : env_name) c = char(std::toupper(static_cast<unsigned char>(c)));
  const char* env = std::getenv(env_name.c_str());
  std::string value = env ? env : "";
  const std::string prefix = std::string("--") + name + "=";
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) value = argv[i] + prefix.size();
  return value.empty() ? fallback : value;
}

bool truthy(const std::string& v) { return v == "true" || v == "yes" || v == "1" || v == "on"; }

void print_help() {
  std::printf(
      "xattn_bench [--xattn_full] [--xattn_out=DIR] [Google Benchmark flags]\n"
      "  (no flag)         the headline suite: peaks, each family at its headline shape, the tokens/s\n"
      "                    sweep over N = 1k..128k; prints one table (a few minutes on two cores)\n"
      "  --xattn_full      the full suite: every shape, thread count and impl, one table per family\n"
      "                    (tens of minutes)\n"
      "  --xattn_out=DIR   where results.json, table.md and tokens_per_s.png go (default bench-results)\n"
      "\n");
  benchmark::PrintDefaultHelp();
}

// Removes --name / --name=value from argv; returns the value ("" when bare), or nullopt if absent.
std::optional<std::string> take_flag(int& argc, char** argv, const char* name) {
  const std::string bare = std::string("--") + name, prefix = bare + "=";
  std::optional<std::string> value;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    if (argv[i] == bare) value = "";
    else if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) value = argv[i] + prefix.size();
    else argv[out++] = argv[i];
  }
  argc = out;
  return value;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Draws tokens_per_s.png from the run's JSON with scripts/plot_tokens.py (its path comes from the
// build), with Debian's python3 if there (python3-matplotlib installs for it), else python3 on PATH.
void plot(const std::string& json, const std::string& png) {
  const std::string script = XATTN_PLOT_SCRIPT;
  if (!std::filesystem::exists(script)) {
    std::cerr << "xattn_bench: no plot: " << script << " not found\n";
    return;
  }
  const std::string python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
  const std::string cmd = python + " " + shell_quote(script) + " " + shell_quote(json) + " " + shell_quote(png);
  if (std::system(cmd.c_str()) != 0) std::cerr << "xattn_bench: no plot: `" << cmd << "` failed\n";
}

}  // namespace
}  // namespace xattn_bench

int main(int argc, char** argv) {
  using namespace xattn_bench;
  const bool full = take_flag(argc, argv, "xattn_full").has_value();
  const std::filesystem::path out_dir = take_flag(argc, argv, "xattn_out").value_or("bench-results");
  const std::string format = flag(argc, argv, "benchmark_format", "console");
  const std::string color = flag(argc, argv, "benchmark_color", "auto");
  const bool tabular = truthy(flag(argc, argv, "benchmark_counters_tabular", "false"));

  // Unless the user names a file, the run's JSON goes to DIR/results.json.
  std::vector<char*> args(argv, argv + argc);
  std::string json = flag(argc, argv, "benchmark_out", "");
  const bool json_out = json.empty() || flag(argc, argv, "benchmark_out_format", "json") == "json";
  std::string out_flag, format_flag = "--benchmark_out_format=json";
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    std::cerr << "xattn_bench: cannot create " << out_dir << ": " << ec.message() << "\n";
    return 1;
  }
  if (json.empty()) {
    json = (out_dir / "results.json").string();
    out_flag = "--benchmark_out=" + json;
    args.push_back(out_flag.data());
    if (flag(argc, argv, "benchmark_out_format", "").empty()) args.push_back(format_flag.data());
  }
  int args_count = static_cast<int>(args.size());
  args.push_back(nullptr);

  register_all(full ? suite::full : suite::headline);
  benchmark::Initialize(&args_count, args.data(), print_help);
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;

  const std::string markdown = (out_dir / "table.md").string();
  bool ran = false;
  if (format == "console") {
    // The headline suite's rows are progress (stderr); its one table is the output (stdout).
    const bool rows_to_stderr = !full && !truthy(flag(argc, argv, "benchmark_list_tests", "false"));
    const char* term = std::getenv("TERM");
    const bool use_color = color == "auto" ? isatty(rows_to_stderr ? STDERR_FILENO : STDOUT_FILENO) && term &&
                                                 std::strcmp(term, "dumb") != 0
                                           : truthy(color);
    const int opts = (use_color ? benchmark::ConsoleReporter::OO_Color : 0) |
                     (tabular ? benchmark::ConsoleReporter::OO_Tabular : 0);
    auto r = std::make_unique<comparison_reporter<benchmark::ConsoleReporter>>(
        std::cout, full, markdown, static_cast<benchmark::ConsoleReporter::OutputOptions>(opts));
    if (rows_to_stderr) r->SetOutputStream(&std::cerr);
    benchmark::RunSpecifiedBenchmarks(r.get());
    ran = r->ran();
  } else if (format == "json") {
    auto r = std::make_unique<comparison_reporter<benchmark::JSONReporter>>(std::cerr, full, markdown);
    benchmark::RunSpecifiedBenchmarks(r.get());
    ran = r->ran();
  } else {  // csv, or a bad format: the library's own reporter (and its error)
    benchmark::RunSpecifiedBenchmarks();
    ran = true;
  }
  benchmark::Shutdown();
  if (ran && json_out) plot(json, (out_dir / "tokens_per_s.png").string());
  return 0;
}
