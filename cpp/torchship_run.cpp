// torchship-run: run a torchship artifact from C++ (libtorch), no Python.
//
//   torchship-run ARTIFACT [--format torchscript|aoti] [--no-verify] < inputs.jsonl > outputs.jsonl
//
// Reads manifest.json, checks every file it lists against its sha256 (as the Python runtime does; --no-verify
// skips this), loads model.pt with torch::jit::load (one method per bucket) or model.pt2 with
// torch::inductor::AOTIModelPackageLoader, then for every JSON line of token ids on stdin,
//   {"input_ids": [...], "attention_mask": [...], "token_type_ids": [...]}
// pads to the right length (the smallest bucket, or a multiple of 8 for .pt2), runs the model, and writes one
// JSON line keyed by output name, with per-token outputs cut back to the input's length.
// Errors go to stderr as one line, with exit code 1 (bad artifact) or 2 (bad input line).

#include <torch/script.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
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
    const auto& entries = a.manifest.at("formats").at("torchscript");
    module_ = torch::jit::load(a.root + "/" + entries.at(0).at("file").get<std::string>());
    module_.eval();
    for (const auto& e : entries) buckets_.push_back(e.at("seq").get<int64_t>());
    std::sort(buckets_.begin(), buckets_.end());
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
    auto out = outputs.at(i)[0];  // drop the batch axis
    if (a.seq_axis[i]) out = out.narrow(*a.seq_axis[i] - 1, 0, seq);
    result[a.outputs[i]] = to_json(out);
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::string root, format = "torchscript";
  bool check = true;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--format" && i + 1 < argc) {
      format = argv[++i];
    } else if (arg == "--no-verify") {
      check = false;
    } else if (arg == "-h" || arg == "--help") {
      std::cout << "usage: torchship-run ARTIFACT [--format torchscript|aoti] [--no-verify] < ids.jsonl > outputs.jsonl\n";
      return 0;
    } else if (arg.rfind("-", 0) == 0 || !root.empty()) {
      std::cerr << "torchship-run: error: unexpected argument '" << arg
                << "'; usage: torchship-run ARTIFACT [--format torchscript|aoti] [--no-verify]\n";
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
