// torchship-run: run a torchship artifact from C++ (libtorch), no Python.
//
//   torchship-run ARTIFACT [--format torchscript|aoti] [--output NAME]... [--no-verify] < inputs.jsonl > outputs.jsonl
//
// Reads manifest.json, checks every file it lists against its sha256 (as the Python runtime does; --no-verify
// skips this), loads model.pt with torch::jit::load (one method per bucket) or model.pt2 with
// torch::inductor::AOTIModelPackageLoader, then for every JSON line of token ids on stdin,
//   {"input_ids": [...], "attention_mask": [...], "token_type_ids": [...]}
// pads to the right length (the smallest bucket, or a multiple of 8 for .pt2), runs the model, and writes one
// JSON line keyed by output name (every output, or those named by --output), with per-token outputs cut back to
// the input's length. TorchScript's float32 linear layers run on oneDNN where that is measured faster (below).
// Errors go to stderr as one line, with exit code 1 (bad artifact) or 2 (bad input line).

#include <torch/script.h>
#include <torch/version.h>
#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

using json = nlohmann::json;

constexpr int kSchemaVersion = 1;  // torchship/artifact.py SCHEMA_VERSION

namespace {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Artifact {
  std::string root;
  json manifest;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  std::vector<std::optional<int64_t>> seq_axis;  // per output: the axis to cut, if any
  std::vector<bool> written;                      // per output: whether it is written (--output; all by default)
  int64_t max_length = 0;
  int64_t pad_token_id = 0;
};

Artifact read_artifact(const std::string& root) {
  std::ifstream file(root + "/manifest.json");
  if (!file) throw std::runtime_error(root + " has no manifest.json; pass the directory `torchship export` wrote");
  Artifact a;
  a.root = root;
  a.manifest = json::parse(file);
  const auto version = a.manifest.value("schema_version", json());
  if (version != json(kSchemaVersion))
    throw std::runtime_error(root + "/manifest.json has schema_version " + version.dump() + ", this torchship-run reads " +
                             std::to_string(kSchemaVersion) +
                             "; export the artifact again with a matching torchship, or rebuild torchship-run");
  a.inputs = a.manifest.at("inputs").get<std::vector<std::string>>();
  a.outputs = a.manifest.at("outputs").get<std::vector<std::string>>();
  for (const auto& name : a.outputs) {
    const auto axes = a.manifest.at("output_axes").at(name);
    std::optional<int64_t> axis;
    for (size_t i = 0; i < axes.size(); ++i) {
      if (axes[i].is_string() && axes[i].get<std::string>() == "seq") axis = static_cast<int64_t>(i);
    }
    a.seq_axis.push_back(axis);
  }
  a.max_length = a.manifest.at("max_length").get<int64_t>();
  a.pad_token_id = a.manifest.at("tokenizer").at("pad_token_id").get<int64_t>();
  return a;
}

// SHA-256 through OpenSSL's EVP interface (Debian's libssl-dev; `make cpp` installs it), streamed in 1 MiB blocks.
std::string sha256_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot read " + path);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("OpenSSL could not start a SHA-256 digest");
  std::vector<char> buffer(1 << 20);
  while (file) {
    file.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    if (EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(file.gcount())) != 1)
      throw std::runtime_error("OpenSSL SHA-256 failed on " + path);
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest.data(), &size) != 1)
    throw std::runtime_error("OpenSSL SHA-256 failed on " + path);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < size; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 0xf];
  }
  return out;
}

// Every file the manifest lists must exist and match its sha256, as torchship.load checks.
void verify(const Artifact& a) {
  if (!a.manifest.contains("files") || a.manifest.at("files").empty())
    throw std::runtime_error(a.root + "/manifest.json lists no files; export the artifact again");
  for (const auto& [rel, expected] : a.manifest.at("files").items()) {
    const std::string path = a.root + "/" + rel;
    if (!std::ifstream(path))
      throw std::runtime_error("artifact file " + rel + " is missing from " + a.root +
                               "; the artifact is incomplete, export it again");
    const std::string actual = sha256_file(path);
    if (actual != expected.get<std::string>())
      throw std::runtime_error("artifact file " + rel + " in " + a.root + " has sha256 " + actual.substr(0, 12) +
                               "..., the manifest says " + expected.get<std::string>().substr(0, 12) +
                               "...: the file was modified or corrupted; export the artifact again");
  }
}

// ---- float32 linear layers on oneDNN's prepacked kernels, as torchship.load does (formats/torchscript.py) ----
// MKL's sgemm, behind aten::linear on x86, picks slow kernels on AMD CPUs: at all-MiniLM-L6-v2's layers oneDNN's
// prepacked linear ran 1.2-1.8x faster on an AVX-512 EPYC. model.pt stays plain TorchScript; the graphs are
// rewritten in memory, before their first run. TORCHSHIP_ONEDNN_LINEAR=1 or 0 forces the choice; unset, it is
// measured here at the model's largest layer (machine.onednn_linear_pace).

constexpr const char* kOneDnnEnv = "TORCHSHIP_ONEDNN_LINEAR";
constexpr double kOneDnnPays = 1.05;  // machine.ONEDNN_PAYS

at::Tensor call_op(const char* name, const char* overload, torch::jit::Stack stack) {
  c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).callBoxed(&stack);
  return stack.at(0).toTensor();
}

at::Tensor pack_weight(const at::Tensor& weight) {
  return call_op("mkldnn::_reorder_linear_weight", "", {weight, c10::IValue()});
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias) {
  return call_op("mkldnn::_linear_pointwise", "",
                 {x, packed, bias, std::string("none"), c10::List<std::optional<at::Scalar>>(), std::string("")});
}

struct Linear {
  std::shared_ptr<torch::jit::Graph> graph;
  torch::jit::Node* node;
  at::Tensor weight;
};

// Each aten::linear whose weight is a float32 matrix folded into the graph (a frozen module's).
std::vector<Linear> float32_linears(const std::vector<std::shared_ptr<torch::jit::Graph>>& graphs) {
  std::vector<Linear> found;
  for (const auto& graph : graphs) {
    for (auto* node : graph->nodes()) {
      if (node->kind() != c10::Symbol::fromQualString("aten::linear")) continue;
      auto* weight = node->input(1);
      if (weight->node()->kind() != c10::prim::Constant) continue;
      auto value = torch::jit::toIValue(weight);
      if (value && value->isTensor() && value->toTensor().scalar_type() == at::kFloat && value->toTensor().dim() == 2)
        found.push_back({graph, node, value->toTensor()});
    }
  }
  return found;
}

// The fastest run of each of two, run by turns (at least 5 each and 0.04 s in all, after a warm-up of each), so
// that another process's load hits both alike (machine.fastest_by_turns).
template <typename F, typename G>
std::pair<double, double> fastest_pair(F first, G second) {
  first();
  second();
  double best[2] = {1e30, 1e30}, total = 0;
  for (int i = 0; i < 5 || total < 0.04; ++i) {
    for (int which = 0; which < 2; ++which) {
      const auto start = std::chrono::steady_clock::now();
      which == 0 ? first() : second();
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      best[which] = std::min(best[which], took);
      total += took;
    }
  }
  return {best[0], best[1]};
}

// aten::linear's time over oneDNN's at a layer of this shape: the geometric mean over 16, 128 and 1024 rows.
double onednn_pace(int64_t out_features, int64_t in_features) {
  torch::manual_seed(0);
  const auto w = torch::randn({out_features, in_features});
  const auto b = torch::randn({out_features});
  const auto packed = pack_weight(w);
  torch::InferenceMode guard;
  double product = 1;
  for (const int64_t rows : {16, 128, 1024}) {
    const auto x = torch::randn({1, rows, in_features});
    const auto [aten, onednn] = fastest_pair([&] { at::linear(x, w, b); }, [&] { onednn_linear(x, packed, b); });
    product *= aten / onednn;
  }
  return std::cbrt(product);
}

// ---- a pace recorded per machine, shared with the Python runtime (machine.recorded_pace) ----
// A pace measured quiet is kept in $TORCHSHIP_CACHE/paces.json (default ~/.cache/torchship), keyed by the CPU's
// name, cores and instruction sets, PyTorch's version and what was timed, so later starts, in C++ or Python,
// reuse it instead of timing again: measured at each start, a load burst flipped the Python runtime's verdict 1
// time in 12 on a 2-core EPYC. The key is the JSON text Python's json.dumps(..., sort_keys=True) writes.

constexpr double kDisturbed = 0.12;  // machine.DISTURBED: others' share of the CPUs that leaves a pace unrecorded
constexpr const char* kIsa[] = {"avx2",     "fma",      "avx512f",  "avx512_vnni", "avx512_bf16",
                                "amx_tile", "amx_int8", "amx_bf16", "asimd",       "sve"};  // machine.ISA

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

// machine.cpu_name and machine._isa: the first "model name" and "flags" (or Arm's "Features") lines of /proc/cpuinfo.
std::pair<std::string, std::vector<std::string>> cpu_identity() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, name;
  std::vector<std::string> isa;
  bool flags_seen = false;
  while (std::getline(cpuinfo, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const auto field = line.substr(0, colon);
    if (name.empty() && field.rfind("model name", 0) == 0) name = trim(line.substr(colon + 1));
    if (!flags_seen && (field.rfind("flags", 0) == 0 || field.rfind("Features", 0) == 0)) {
      flags_seen = true;
      std::istringstream words(line.substr(colon + 1));
      for (std::string flag; words >> flag;)
        if (std::find(std::begin(kIsa), std::end(kIsa), flag) != std::end(kIsa)) isa.push_back(flag);
      std::sort(isa.begin(), isa.end());
      isa.erase(std::unique(isa.begin(), isa.end()), isa.end());
    }
  }
  if (name.empty()) {  // platform.processor() or platform.machine(), as Python falls back to
    utsname host{};
    if (uname(&host) == 0) name = host.machine;
  }
  return {name, isa};
}

// machine.pace_key: {"cores", "cpu", "isa", "key", "torch"} in Python's json.dumps form (", " and ": ", ASCII).
std::string pace_key(const std::string& what) {
  const auto [cpu, isa] = cpu_identity();
  const auto text = [](const json& value) { return value.dump(-1, ' ', true); };
  std::string isa_list = "[";
  for (size_t i = 0; i < isa.size(); ++i) isa_list += (i ? ", " : "") + text(isa[i]);
  isa_list += "]";
  const std::string version = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                              std::to_string(TORCH_VERSION_PATCH);
  return "{\"cores\": " + std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) + ", \"cpu\": " + text(cpu) +
         ", \"isa\": " + isa_list + ", \"key\": " + text(what) + ", \"torch\": " + text(version) + "}";
}

std::string paces_path() {  // cache.default_dir() / machine.PACES
  const char* cache = std::getenv("TORCHSHIP_CACHE");
  if (cache && *cache) return std::string(cache) + "/paces.json";
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.cache/torchship/paces.json";
}

// Seconds all CPUs spent busy since boot (/proc/stat), or a negative number where it cannot be read.
double cpu_busy_s() {
  std::ifstream stat("/proc/stat");
  std::string cpu;
  std::vector<double> fields;
  if (!(stat >> cpu) || cpu != "cpu") return -1;
  for (double v; fields.size() < 8 && stat >> v;) fields.push_back(v);
  if (fields.size() < 4) return -1;
  double total = 0;
  for (const double v : fields) total += v;
  const double idle = fields[3] + (fields.size() > 4 ? fields[4] : 0);  // idle + iowait
  return (total - idle) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double process_cpu_s() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// machine.recorded_pace: the recorded pace for `what` if a quiet one is there, else measure() now, recorded when
// other processes used under kDisturbed of the CPUs meanwhile. Also says where the pace came from. A file that
// cannot be read or written only costs the measurement; it is written beside and renamed over, never half-written.
template <typename F>
std::pair<double, std::string> recorded_pace(const std::string& what, F measure) {
  const auto path = paces_path();
  const auto key = pace_key(what);
  json recorded = json::object();
  {
    std::ifstream in(path);
    if (in) recorded = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!recorded.is_object()) recorded = json::object();
  }
  const auto found = recorded.find(key);
  if (found != recorded.end() && found->is_object() && found->contains("pace") && (*found)["pace"].is_number_float()) {
    const auto& when = (*found)["when"];
    return {(*found)["pace"].get<double>(),
            "measured quiet on this machine on " + (when.is_string() ? when.get<std::string>() : std::string("?"))};
  }
  const double busy = cpu_busy_s(), own = process_cpu_s();
  const auto start = std::chrono::steady_clock::now();
  const double pace = measure();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  json others = nullptr;  // null where it cannot be measured, as Python records it
  if (busy >= 0 && wall > 0) {
    const double share = ((cpu_busy_s() - busy) - (process_cpu_s() - own)) / (wall * sysconf(_SC_NPROCESSORS_ONLN));
    others = std::round(std::clamp(share, 0.0, 1.0) * 1000) / 1000;
    if (others.get<double>() >= kDisturbed) {
      char why[120];
      std::snprintf(why, sizeof(why), "measured now while other processes used %.0f%% of the CPUs; not recorded",
                    others.get<double>() * 100);
      return {pace, why};
    }
  }
  char today[16];
  const std::time_t now = std::time(nullptr);
  std::strftime(today, sizeof(today), "%Y-%m-%d", std::localtime(&now));
  recorded[key] = {{"pace", pace}, {"when", today}, {"others_load", others}};
  const std::string partial = path + "." + std::to_string(getpid()) + ".tmp";
  std::error_code failed;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), failed);
  if (!failed) {
    std::ofstream out(partial);
    out << recorded.dump(1, ' ', true);
    out.close();
    if (!out || std::rename(partial.c_str(), path.c_str()) != 0) std::remove(partial.c_str());
  }
  return {pace, "measured now, recorded"};
}

// Whether to rewrite, and why: the environment forces it, else the pace at the largest layer decides, recorded
// per machine (recorded_pace) under the key the Python runtime uses, so either reuses the other's.
std::pair<bool, std::string> onednn_pays(const std::vector<Linear>& linears) {
  const char* env = std::getenv(kOneDnnEnv);
  const std::string forced = env ? env : "";
  if (forced == "0" || forced == "1") return {forced == "1", std::string(kOneDnnEnv) + "=" + forced};
  if (!forced.empty())
    throw std::runtime_error(std::string(kOneDnnEnv) + "='" + forced +
                             "': set it to 1 (always oneDNN), 0 (never), or leave it unset");
  if (!at::hasMKLDNN()) return {false, "this libtorch has no oneDNN"};
  const auto largest = std::max_element(linears.begin(), linears.end(), [](const Linear& a, const Linear& b) {
    return a.weight.numel() < b.weight.numel();
  });
  const auto out_features = largest->weight.size(0), in_features = largest->weight.size(1);
  const std::string shape = std::to_string(in_features) + "->" + std::to_string(out_features);
  const auto [pace, when] = recorded_pace("onednn-linear " + shape + " threads=" + std::to_string(at::get_num_threads()),
                                          [&] { return onednn_pace(out_features, in_features); });
  char why[240];
  std::snprintf(why, sizeof(why), "oneDNN's prepacked linear ran %.2fx aten::linear at %s (%s): %s", pace,
                shape.c_str(), when.c_str(), pace >= kOneDnnPays ? "pays" : "does not pay (under 1.05x)");
  return {pace >= kOneDnnPays, why};
}

// aten::linear(x, W, b) -> mkldnn::_linear_pointwise(x, pack(W), b, "none", [], ""), each weight packed once and
// shared by every method that holds it. Returns the number of weights packed.
size_t prepack_linears(const std::vector<Linear>& linears) {
  std::map<std::pair<const void*, int64_t>, at::Tensor> packed;
  for (const auto& [graph, node, weight] : linears) {
    const auto key = std::make_pair(weight.data_ptr(), weight.numel());
    if (!packed.count(key)) packed[key] = pack_weight(weight);
    torch::jit::WithInsertPoint point(node);
    auto* scalars = graph->insertNode(graph->createList(c10::OptionalType::create(c10::NumberType::get()), {}));
    auto* constant = graph->insertNode(graph->create(c10::prim::Constant));  // insertConstant refuses opaque tensors
    constant->t_(c10::attr::value, packed[key]);
    constant->output()->inferTypeFrom(packed[key]);
    std::vector<torch::jit::Value*> inputs = {node->input(0), constant->output(), node->input(2),
                                              graph->insertConstant(std::string("none")), scalars->output(),
                                              graph->insertConstant(std::string(""))};
    auto* linear = graph->insertNode(graph->create(c10::Symbol::fromQualString("mkldnn::_linear_pointwise"), inputs, 1));
    linear->output()->setType(node->output()->type());
    node->output()->replaceAllUsesWith(linear->output());
    node->destroy();
  }
  std::vector<torch::jit::Graph*> done;
  for (const auto& linear : linears) {
    if (std::find(done.begin(), done.end(), linear.graph.get()) != done.end()) continue;
    torch::jit::EliminateDeadCode(linear.graph);  // the float32 weights' constants, now unused
    done.push_back(linear.graph.get());
  }
  return packed.size();
}

// A loaded format: the length it pads to, and how it runs.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual int64_t pad_length(int64_t seq) const = 0;
  virtual std::vector<at::Tensor> run(int64_t length, const std::vector<at::Tensor>& inputs) = 0;
};

class TorchScriptBackend : public Backend {
 public:
  explicit TorchScriptBackend(const Artifact& a) {
    // the legacy executor, as torchship.load runs TorchScript on the CPU: the profiling one specializes a graph per
    // input shape, which on the CPU bought no speed and held twice the memory (README, "Memory of a long job")
    torch::jit::getProfilingMode() = false;
    const auto& entries = a.manifest.at("formats").at("torchscript");
    module_ = torch::jit::load(a.root + "/" + entries.at(0).at("file").get<std::string>());
    module_.eval();
    for (const auto& e : entries) buckets_.push_back(e.at("seq").get<int64_t>());
    std::sort(buckets_.begin(), buckets_.end());
    std::vector<std::shared_ptr<torch::jit::Graph>> graphs;
    for (const auto seq : buckets_) graphs.push_back(module_.get_method("seq_" + std::to_string(seq)).graph());
    if (module_.find_method("forward")) graphs.push_back(module_.get_method("forward").graph());
    const auto linears = float32_linears(graphs);
    if (linears.empty()) return;
    const auto [pays, why] = onednn_pays(linears);
    const std::string where = pays ? "on oneDNN (" + std::to_string(prepack_linears(linears)) + " weights packed)"
                                   : "as traced";
    std::cerr << "torchship-run: linear layers " << where << ": " << why << "\n";
  }
  int64_t pad_length(int64_t seq) const override {
    auto it = std::lower_bound(buckets_.begin(), buckets_.end(), seq);
    if (it == buckets_.end())
      throw InputError("sequence length " + std::to_string(seq) + " exceeds the longest traced length " +
                       std::to_string(buckets_.back()));
    return *it;
  }
  std::vector<at::Tensor> run(int64_t length, const std::vector<at::Tensor>& inputs) override {
    std::vector<c10::IValue> args(inputs.begin(), inputs.end());
    auto method = module_.get_method("seq_" + std::to_string(length));
    auto out = method(args).toTuple();
    std::vector<at::Tensor> tensors;
    for (const auto& v : out->elements()) tensors.push_back(v.toTensor());
    return tensors;
  }

 private:
  torch::jit::Module module_;
  std::vector<int64_t> buckets_;
};

class AotiBackend : public Backend {
 public:
  explicit AotiBackend(const Artifact& a) {
    const auto& entry = a.manifest.at("formats").at("aoti").at(0);
    loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(a.root + "/" +
                                                                         entry.at("file").get<std::string>());
    max_seq_ = entry.at("max_seq").get<int64_t>();
    multiple_ = entry.at("pad_multiple").get<int64_t>();
  }
  int64_t pad_length(int64_t seq) const override {
    if (seq > max_seq_)
      throw InputError("sequence length " + std::to_string(seq) + " exceeds the longest traced length " +
                       std::to_string(max_seq_));
    return std::min((seq + multiple_ - 1) / multiple_ * multiple_, max_seq_);
  }
  std::vector<at::Tensor> run(int64_t, const std::vector<at::Tensor>& inputs) override {
    return loader_->run(inputs);
  }

 private:
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  int64_t max_seq_ = 0;
  int64_t multiple_ = 8;
};

std::vector<int64_t> field(const json& line, const std::string& name, size_t expected) {
  if (!line.contains(name)) return {};
  if (!line.at(name).is_array()) throw InputError("'" + name + "' must be a list of integers");
  auto values = line.at(name).get<std::vector<int64_t>>();
  if (expected && values.size() != expected)
    throw InputError("'" + name + "' has " + std::to_string(values.size()) + " ids, input_ids has " +
                     std::to_string(expected));
  return values;
}

json to_json(const at::Tensor& t) {
  auto c = t.contiguous().to(at::kFloat);
  if (c.dim() == 0) return c.item<float>();
  if (c.dim() == 1) {
    const float* p = c.data_ptr<float>();
    return json(std::vector<float>(p, p + c.numel()));
  }
  json arr = json::array();
  for (int64_t i = 0; i < c.size(0); ++i) arr.push_back(to_json(c[i]));
  return arr;
}

json run_line(const Artifact& a, Backend& backend, const json& line) {
  if (!line.is_object()) throw InputError("each line must be a JSON object with input_ids");
  auto ids = field(line, "input_ids", 0);
  if (ids.empty()) throw InputError("'input_ids' is missing or empty");
  const auto seq = static_cast<int64_t>(ids.size());
  auto mask = field(line, "attention_mask", ids.size());
  auto types = field(line, "token_type_ids", ids.size());
  if (mask.empty()) mask.assign(ids.size(), 1);
  if (types.empty()) types.assign(ids.size(), 0);
  const int64_t length = backend.pad_length(seq);

  std::vector<at::Tensor> inputs;
  for (const auto& name : a.inputs) {
    const auto& src = name == "input_ids" ? ids : name == "attention_mask" ? mask : types;
    const int64_t fill = name == "input_ids" ? a.pad_token_id : 0;
    auto t = torch::full({1, length}, fill, torch::kLong);  // (1, length)
    t.slice(1, 0, seq).copy_(torch::tensor(src, torch::kLong));
    inputs.push_back(t);
  }
  torch::InferenceMode guard;
  auto outputs = backend.run(length, inputs);
  json result = json::object();
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    if (!a.written[i]) continue;
    auto out = outputs.at(i)[0];  // drop the batch axis
    if (a.seq_axis[i]) out = out.narrow(*a.seq_axis[i] - 1, 0, seq);
    result[a.outputs[i]] = to_json(out);
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  // oneDNN and its PyTorch wrapper (ideep) each keep a compiled kernel per shape, 1024 by default; bounded as
  // torchship.load bounds them (machine.py)
  setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32", 0);
  setenv("LRU_CACHE_CAPACITY", "32", 0);
  std::string root, format = "torchscript";
  std::vector<std::string> wanted;
  bool check = true;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--format" && i + 1 < argc) {
      format = argv[++i];
    } else if (arg == "--output" && i + 1 < argc) {
      wanted.push_back(argv[++i]);
    } else if (arg == "--no-verify") {
      check = false;
    } else if (arg == "-h" || arg == "--help") {
      std::cout << "usage: torchship-run ARTIFACT [--format torchscript|aoti] [--output NAME]... [--no-verify] < ids.jsonl > outputs.jsonl\n";
      return 0;
    } else if (arg.rfind("-", 0) == 0 || !root.empty()) {
      std::cerr << "torchship-run: error: unexpected argument '" << arg
                << "'; usage: torchship-run ARTIFACT [--format torchscript|aoti] [--output NAME]... [--no-verify]\n";
      return 1;
    } else {
      root = arg;
    }
  }
  if (root.empty()) {
    std::cerr << "torchship-run: error: missing ARTIFACT; usage: torchship-run ARTIFACT [--format torchscript|aoti]\n";
    return 1;
  }
  Artifact artifact;
  std::unique_ptr<Backend> backend;
  try {
    artifact = read_artifact(root);
    for (const auto& name : wanted) {
      if (std::find(artifact.outputs.begin(), artifact.outputs.end(), name) == artifact.outputs.end()) {
        std::string known;
        for (const auto& o : artifact.outputs) known += (known.empty() ? "" : ", ") + o;
        throw std::runtime_error("--output " + name + ": the artifact has no such output; its outputs are " + known);
      }
    }
    for (const auto& name : artifact.outputs)
      artifact.written.push_back(wanted.empty() || std::find(wanted.begin(), wanted.end(), name) != wanted.end());
    if (check) verify(artifact);
    if (!artifact.manifest.at("formats").contains(format))
      throw std::runtime_error("artifact has no '" + format + "' format; export it with --format " + format);
    if (format == "torchscript") {
      backend = std::make_unique<TorchScriptBackend>(artifact);
    } else if (format == "aoti") {
      backend = std::make_unique<AotiBackend>(artifact);
    } else {
      throw std::runtime_error("format '" + format + "' is not runnable from C++; use torchscript or aoti");
    }
  } catch (const std::exception& e) {
    std::cerr << "torchship-run: error: " << e.what() << "\n";
    return 1;
  }
  std::string text;
  size_t number = 0;
  while (std::getline(std::cin, text)) {
    ++number;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      std::cout << run_line(artifact, *backend, json::parse(text)).dump() << "\n";
    } catch (const std::exception& e) {
      std::cerr << "torchship-run: error: stdin line " << number << ": " << e.what() << "\n";
      return 2;
    }
  }
  return 0;
}
