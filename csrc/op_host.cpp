#include "op_host.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <string>

#include "quantized_state.h"
#include "tensor_fields.h"

namespace adadelta_fused {
namespace {

bool state_dtype_supported(at::ScalarType param, at::ScalarType state) {
  using ST = at::ScalarType;
  switch (param) {
    case ST::Float:
      return state == ST::Float || state == ST::BFloat16;
    case ST::Double:
      return state == ST::Double;
    case ST::BFloat16:
      return state == ST::BFloat16 || state == ST::Float;
    case ST::Half:
      return state == ST::Half || state == ST::Float || state == ST::BFloat16;
    default:
      return false;
  }
}

void check_list_length(const char* name, at::TensorList list, size_t expected) {
  TORCH_CHECK_VALUE(list.size() == expected, name, " has ", list.size(), " tensors but params has ", expected);
}

void check_scalar_tensor(const char* name, const c10::optional<at::Tensor>& t, const c10::Device& device) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->sym_numel() == 1, name, " must be a 1-element tensor, got ", t->sym_numel(), " elements");
  TORCH_CHECK_VALUE(t->scalar_type() == at::kFloat, name, " must be float32, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->device() == device, name, " is on ", t->device(), " but the params are on ", device);
}

// An inline loop: IntArrayRef's == calls memcmp, 7 % of a 4096-param step's host time for 1-d sizes.
bool same_ints(c10::IntArrayRef a, c10::IntArrayRef b) {
  if (a.size() != b.size()) return false;
  for (size_t d = 0; d < a.size(); ++d) {
    if (a[d] != b[d]) return false;
  }
  return true;
}

bool same_shape(const at::Tensor& a, const at::Tensor& b) {
  // Concrete sizes compare as plain integers; SymInt compares cost 4x as much (0.1 us a param of 5 tensors).
  const c10::TensorImpl* x = a.unsafeGetTensorImpl();
  const c10::TensorImpl* y = b.unsafeGetTensorImpl();
  if (!x->has_symbolic_sizes_strides() && !y->has_symbolic_sizes_strides()) return same_ints(x->sizes(), y->sizes());
  return a.sym_sizes() == b.sym_sizes();
}

void check_companion(const char* name, size_t i, const at::Tensor& t, const at::Tensor& param,
                     at::ScalarType dtype) {
  TORCH_CHECK_VALUE(same_shape(t, param), name, "[", i, "] has shape ", t.sym_sizes(), " but params[", i, "] has ",
                    param.sym_sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, "[", i, "] has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK_VALUE(t.device() == param.device(), name, "[", i, "] is on ", t.device(), " but params[", i,
                    "] is on ", param.device());
}

// A quantized accumulator's scales: fp32, one per kQuantBlock elements of the param, contiguous (the kernels
// index them by block number).
void check_scales(const char* name, size_t i, const at::Tensor& t, const at::Tensor& param) {
  const c10::SymInt blocks = (param.sym_numel() + (kQuantBlock - 1)) / kQuantBlock;
  TORCH_CHECK_VALUE(t.dim() == 1 && t.sym_numel() == blocks, name, "[", i, "] has shape ", t.sym_sizes(),
                    " but params[", i, "] has ", param.sym_numel(), " elements, which need [", blocks,
                    "] scales (one per ", kQuantBlock, " elements)");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, "[", i, "] has dtype ", t.scalar_type(),
                   ", expected float32");
  TORCH_CHECK_VALUE(t.device() == param.device(), name, "[", i, "] is on ", t.device(), " but params[", i,
                    "] is on ", param.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, "[", i, "] must be contiguous (the kernels index it by block)");
}

bool dense_like(const at::Tensor& t, const at::Tensor& layout) {
  return t.is_non_overlapping_and_dense() && same_ints(t.strides(), layout.strides());
}

// torch refuses an lr or weight_decay that overflows the param dtype it converts them to ("value cannot be
// converted to type c10::Half without overflow"): the kernels would turn it into inf and every weight
// into inf or NaN. The same bound here, per param dtype; fp64 params take any finite double.
void check_fits_param_dtype(const char* name, double value, at::ScalarType dtype) {
  // (torch steps an inf or NaN weight_decay into NaN params; this project refuses non-finite hyperparameters)
  TORCH_CHECK_VALUE(std::isfinite(value), "Invalid ", name, ": ", value,
                    " (not finite: the step would turn every param it reaches into inf or NaN)");
  double largest = std::numeric_limits<double>::max();
  if (dtype == at::kFloat) largest = double(std::numeric_limits<float>::max());
  if (dtype == at::kBFloat16) largest = double(std::numeric_limits<c10::BFloat16>::max());
  if (dtype == at::kHalf) largest = double(std::numeric_limits<c10::Half>::max());
  TORCH_CHECK(std::abs(value) <= largest, "Invalid ", name, ": ", value, " cannot be converted to type ", dtype,
              " without overflow (the type of the params)");
}

// Whether two tensors over one storage whose byte ranges meet share an element. Decided exactly where both have
// one element size and, in every dim where both have more than one element, one stride (views that slice one
// tensor): x + sum(i_d s_d) = y + sum(j_d s_d) has a solution with 0 <= i_d < n_d, 0 <= j_d < m_d exactly when
// y - x is a sum of k_d s_d with -(m_d - 1) <= k_d <= n_d - 1, searched from the largest stride down with the
// range the smaller ones can still add (one or two candidates a dim for a slicing's strides). Anything else,
// or a search past kBudget nodes, counts as sharing: refused as before, never a race let through.
bool elements_meet(const at::TensorImpl& x, const at::TensorImpl& y) {
  if (x.itemsize() != y.itemsize() || x.dim() != y.dim()) return true;
  struct Digit {
    int64_t stride, low, high;
  };
  std::vector<Digit> digits;
  for (int64_t d = 0; d < x.dim(); ++d) {
    const int64_t n = x.size(d), m = y.size(d);
    if (n > 1 && m > 1 && x.stride(d) != y.stride(d)) return true;
    const int64_t stride = n > 1 ? x.stride(d) : y.stride(d);
    if (stride != 0 && (n > 1 || m > 1)) digits.push_back({stride, -(m - 1), n - 1});
  }
  std::sort(digits.begin(), digits.end(), [](const Digit& a, const Digit& b) { return a.stride > b.stride; });
  // What the digits after k can add at least and at most.
  std::vector<int64_t> least(digits.size() + 1, 0), most(digits.size() + 1, 0);
  for (size_t k = digits.size(); k-- > 0;) {
    least[k] = least[k + 1] + digits[k].low * digits[k].stride;
    most[k] = most[k + 1] + digits[k].high * digits[k].stride;
  }
  constexpr int64_t kBudget = 1 << 16;
  int64_t nodes = 0;
  const auto floor_div = [](int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); };
  const std::function<bool(size_t, int64_t)> solvable = [&](size_t k, int64_t rest) -> bool {
    if (++nodes > kBudget) return true;
    if (k == digits.size()) return rest == 0;
    const Digit& digit = digits[k];
    const int64_t low = std::max(digit.low, -floor_div(-(rest - most[k + 1]), digit.stride));
    const int64_t high = std::min(digit.high, floor_div(rest - least[k + 1], digit.stride));
    for (int64_t value = low; value <= high; ++value) {
      if (solvable(k + 1, rest - value * digit.stride)) return true;
    }
    return false;
  };
  return solvable(0, y.storage_offset() - x.storage_offset());
}

// Two tensors of one call that share memory would race (the kernels read and write every element of
// every tensor in parallel), so any overlap that involves a written tensor is refused. Only tensors that
// share a storage are compared, first by byte ranges; where ranges meet, elements_meet decides whether an
// element is shared (views that interleave, x[::2] and x[1::2] or two column blocks of one matrix, share
// none, and torch steps them; n views that all interleave cost n^2 / 2 such checks: 256 views of one tensor,
// 2.2 ms a step here). Storages are visited in the order the arguments first name them, and ties in a sweep
// go to the earlier argument, so every backend reports the same pair. The storages are found through one
// open-addressing table with a linked list of spans per storage: no allocation per tensor (a node-based
// map and a vector per storage cost about 1 us a param at 4096 params, 5 tensors each). Tensors are added
// row by row, as the validator reads them (each TensorImpl is a cache miss; one pass misses once), and
// kept in argument order: list by list, each in index order.
class OverlapCheck {
 public:
  OverlapCheck(size_t lists, size_t rows) : rows_(rows), spans_(lists * rows) {
    size_t capacity = 16;
    while (capacity < 2 * spans_.size()) capacity <<= 1;  // at most half full: short probe runs
    table_.resize(capacity);
  }

  void add(size_t list, const char* name, size_t index, bool written, const at::Tensor& t) {
    const at::TensorImpl* impl = t.unsafeGetTensorImpl();
    const void* storage = storage_of(impl);
    if (t.numel() == 0 || storage == nullptr) return;
    const uintptr_t item = uintptr_t(t.itemsize());
    uintptr_t extent = 1;
    for (int64_t d = 0; d < t.dim(); ++d) extent += uintptr_t(t.size(d) - 1) * uintptr_t(t.stride(d));
    const uintptr_t begin = uintptr_t(t.storage_offset()) * item;
    const size_t mask = table_.size() - 1;
    // Fibonacci hashing of the address; its low bits are alignment zeros.
    size_t slot = size_t((uint64_t(uintptr_t(storage)) * 0x9E3779B97F4A7C15ull) >> 40) & mask;
    while (table_[slot].storage != nullptr && table_[slot].storage != storage) slot = (slot + 1) & mask;
    Slot& entry = table_[slot];
    entry.storage = storage;
    const int32_t position = int32_t(list * rows_ + index);
    spans_[position] = {name, index, written, begin, begin + extent * item, impl, entry.head, int32_t(slot)};
    entry.head = position;
    if (++entry.count > 1) shared_ = true;  // (not `shared_ || ++count`: every count must advance)
  }

  void check() {
    if (!shared_) return;
    std::vector<int32_t> group;
    std::vector<int32_t> written_active, read_active;
    for (int32_t first = 0; first < int32_t(spans_.size()); ++first) {
      if (spans_[first].slot < 0) continue;  // an empty tensor, or none added there
      Slot& entry = table_[size_t(spans_[first].slot)];
      if (entry.count < 2) continue;  // alone in its storage, or its storage already swept
      entry.count = 0;
      group.clear();
      for (int32_t k = entry.head; k >= 0; k = spans_[k].previous) group.push_back(k);
      // By start, then by argument position (a span's position in spans_).
      std::sort(group.begin(), group.end(), [&](int32_t x, int32_t y) {
        return spans_[x].begin != spans_[y].begin ? spans_[x].begin < spans_[y].begin : x < y;
      });
      // Sweep: each span against the earlier ones whose range it starts inside, the written ones, and the
      // read-only ones too if it is written (many params reading one grad stay one comparison each; spans
      // that do not overlap, a flat buffer's ranges between params without grads, meet at most one).
      written_active.clear();
      read_active.clear();
      for (const int32_t k : group) {
        const Span& b = spans_[k];
        // (a list is pruned only when it is compared with: read-only spans are pruned by written ones)
        for (std::vector<int32_t>* active : {&written_active, &read_active}) {
          if (active == &read_active && !b.written) break;
          active->erase(std::remove_if(active->begin(), active->end(),
                                       [&](int32_t j) { return spans_[j].end <= b.begin; }),
                        active->end());
          for (const int32_t j : *active) {
            const Span& a = spans_[j];
            if (elements_meet(*a.impl, *b.impl)) {
              TORCH_CHECK_VALUE(false, b.name, "[", b.index, "] and ", a.name, "[", a.index,
                                "] share memory (the same tensor twice, or overlapping views); the step writes ",
                                a.written ? a.name : b.name, " and would race. Pass tensors that do not overlap");
            }
          }
        }
        (b.written ? written_active : read_active).push_back(k);
      }
    }
  }

 private:
  struct Span {
    const char* name = nullptr;
    size_t index = 0;
    bool written = false;
    uintptr_t begin = 0;  // bytes within the storage
    uintptr_t end = 0;
    const at::TensorImpl* impl = nullptr;  // (the call's tensors outlive the check)
    int32_t previous = -1;  // the storage's span added before this one (-1: none)
    int32_t slot = -1;      // its storage's slot in table_ (-1: no span here)
  };
  struct Slot {
    const void* storage = nullptr;
    int32_t head = -1;  // the storage's last span added
    int32_t count = 0;
  };
  size_t rows_;
  std::vector<Span> spans_;  // at list * rows + index
  std::vector<Slot> table_;
  bool shared_ = false;
};

// The layout as Python spells it (torch.sparse_csr), so the message names what the user wrote.
std::string layout_name(at::Layout layout) {
  switch (layout) {
    case at::kSparse:
      return "torch.sparse_coo";
    case at::kSparseCsr:
      return "torch.sparse_csr";
    case at::kSparseCsc:
      return "torch.sparse_csc";
    case at::kSparseBsr:
      return "torch.sparse_bsr";
    case at::kSparseBsc:
      return "torch.sparse_bsc";
    case at::kJagged:
      return "torch.jagged";
    default: {
      std::ostringstream name;
      name << layout;
      return name.str();
    }
  }
}

// Every tensor argument must be an ordinary strided tensor; sparse and other layouts are named here
// instead of failing in the dispatcher.
void check_layout(const char* name, size_t i, const at::Tensor& t) {
  if (t.layout() == at::kStrided) return;
  if (std::string(name) == "grads" && t.layout() == at::kSparse) {
    TORCH_CHECK(false, "grads[", i, "] has layout torch.sparse_coo: Adadelta does not support sparse gradients");
  }
  TORCH_CHECK_VALUE(false, name, "[", i, "] has layout ", layout_name(t.layout()),
                    "; the step needs strided (dense) tensors");
}

}  // namespace

void check_op_args(const OpArgs& a, c10::DeviceType expected_device) {
  const size_t n = a.params.size();
  check_list_length("grads", a.grads, n);
  check_list_length("square_avgs", a.square_avgs, n);
  check_list_length("acc_deltas", a.acc_deltas, n);
  const bool has_master = !a.master_params.empty();
  if (has_master) check_list_length("master_params", a.master_params, n);
  if (a.quantized) {
    check_list_length("square_avg_scales", a.square_avg_scales, n);
    check_list_length("acc_delta_scales", a.acc_delta_scales, n);
  }
  TORCH_CHECK_VALUE(a.lr_tensor.has_value() || std::isfinite(a.lr), "Invalid learning rate: ", a.lr,
                    " (must be a finite number)");
  if (a.lr_tensor.has_value()) {
    check_layout("lr_tensor", 0, *a.lr_tensor);
    TORCH_CHECK_VALUE(a.lr_tensor->sym_numel() == 1, "Tensor lr must be 1-element");
    TORCH_CHECK_VALUE(a.lr_tensor->is_floating_point(), "Invalid lr dtype: ", a.lr_tensor->scalar_type(),
                      " (expected a floating-point tensor)");
  }
  TORCH_CHECK_VALUE(a.grad_mode >= 0 && a.grad_mode <= 2, "Invalid grad_mode: ", a.grad_mode,
                    " (expected 0 keep, 1 unscale or 2 zero)");
  if (n == 0) return;

  const std::array<const char*, 7> names = {"params",        "grads",     "square_avgs",      "acc_deltas",
                                            "master_params", "square_avg_scales", "acc_delta_scales"};
  const std::array<at::TensorList, 7> lists = {a.params,        a.grads,           a.square_avgs,     a.acc_deltas,
                                               a.master_params, a.square_avg_scales, a.acc_delta_scales};
  // The lists this call has, in argument order.
  std::array<size_t, 7> present{};
  size_t list_count = 0;
  for (size_t l = 0; l < 7; ++l) {
    if (l < 4 || (l == 4 && has_master) || (l > 4 && a.quantized)) present[list_count++] = l;
  }
  // Written tensors: a stride-0 (expanded) or otherwise self-overlapping tensor cannot hold one result
  // per element, and an inference tensor cannot be updated outside InferenceMode; both refused here,
  // before the first write, instead of half-way through the step.
  const std::array<bool, 7> written = {true, a.grad_mode != int64_t(GradMode::kKeep), true, true, true, true, true};
  for (size_t k = 0; k < list_count; ++k) check_layout(names[present[k]], 0, lists[present[k]][0]);
  const at::Tensor& first = a.params[0];
  const at::ScalarType dtype = first.scalar_type();
  const at::ScalarType state_dtype = a.square_avgs[0].scalar_type();
  const c10::Device device = first.device();
  TORCH_CHECK_VALUE(device.type() == expected_device, "params[0] is on ", device, ", which this kernel cannot run on");
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "params[0] has unsupported dtype ", dtype, "; expected float32, float64, bfloat16 or float16");
  if (a.quantized) {
    TORCH_CHECK_TYPE(state_dtype == at::kByte, "square_avgs[0] has dtype ", state_dtype,
                     "; the quantized op takes uint8 codes");
    TORCH_CHECK_TYPE(dtype != at::kDouble, "quantized (uint8) state is for float32, bfloat16 and float16 params, got ",
                     dtype, " params (float64 params keep float64 state)");
  } else {
    TORCH_CHECK_TYPE(state_dtype_supported(dtype, state_dtype), "square_avgs[0] has dtype ", state_dtype,
                     ", unsupported with ", dtype, " params");
  }
  const bool low_precision = dtype == at::kBFloat16 || dtype == at::kHalf;
  TORCH_CHECK_TYPE(!has_master || low_precision, "master_params are for bf16/fp16 params, got ", dtype, " params");
  TORCH_CHECK_VALUE(!(a.stochastic_rounding && has_master),
                    "stochastic_rounding applies to bf16 params without master_params, not both");
  if (!a.lr_tensor.has_value()) check_fits_param_dtype("learning rate", a.lr, dtype);
  check_fits_param_dtype("weight_decay value", a.weight_decay, dtype);
  check_scalar_tensor("grad_scale", a.grad_scale, device);
  check_scalar_tensor("found_inf", a.found_inf, device);
  if (a.lr_tensor.has_value()) {
    const c10::Device lr_device = a.lr_tensor->device();
    TORCH_CHECK_VALUE(lr_device == device || lr_device.is_cpu(), "lr is on ", lr_device, " but the params are on ",
                      device);
  }
  // One pass, row by row: every check of a tensor runs while its TensorImpl is in cache.
  OverlapCheck overlap(list_count, n);
  bool symbolic = false;
  for (size_t i = 0; i < n; ++i) {
    for (size_t k = 0; k < list_count; ++k) check_layout(names[present[k]], i, lists[present[k]][i]);
    const at::Tensor& p = a.params[i];
    TORCH_CHECK_TYPE(p.scalar_type() == dtype, "params[", i, "] has dtype ", p.scalar_type(), " but params[0] has ",
                     dtype);
    TORCH_CHECK_VALUE(p.device() == device, "params[", i, "] is on ", p.device(), " but params[0] is on ", device);
    check_companion("grads", i, a.grads[i], p, dtype);
    check_companion("square_avgs", i, a.square_avgs[i], p, state_dtype);
    check_companion("acc_deltas", i, a.acc_deltas[i], p, state_dtype);
    if (has_master) check_companion("master_params", i, a.master_params[i], p, at::kFloat);
    if (a.quantized) {
      check_scales("square_avg_scales", i, a.square_avg_scales[i], p);
      check_scales("acc_delta_scales", i, a.acc_delta_scales[i], p);
    }
    for (size_t k = 0; k < list_count; ++k) {
      const size_t l = present[k];
      const at::Tensor& t = lists[l][i];
      // Traced with symbolic shapes (torch.compile's fake kernel), addresses and extents are not numbers
      // yet; the real call checks them.
      if (t.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
        symbolic = true;
        continue;
      }
      if (written[l]) {
        // (A contiguous tensor, the usual case, cannot overlap itself: one flag read, no call.)
        TORCH_CHECK_VALUE(t.is_contiguous() || at::has_internal_overlap(t) != at::MemOverlap::Yes, names[l], "[",
                          i, "] has elements that share memory (an expanded tensor with stride 0?) and the step "
                          "writes it; pass a tensor with its own memory per element (e.g. .clone())");
        TORCH_CHECK(!t.is_inference() || c10::InferenceMode::is_enabled(), names[l], "[", i,
                    "] is an inference tensor; the step updates it in place, which torch allows only inside "
                    "InferenceMode");
      }
      if (!symbolic) overlap.add(k, names[l], i, written[l], t);
    }
  }
  if (!symbolic) overlap.check();
}

bool check_state_steps(at::TensorList steps) {
  bool all_cpu = true;
  for (size_t i = 0; i < steps.size(); ++i) {
    const at::Tensor& step = steps[i];
    TORCH_CHECK_VALUE(step.layout() == at::kStrided && step.sym_numel() == 1 &&
                          (step.scalar_type() == at::kFloat || step.scalar_type() == at::kDouble),
                      "state_steps[", i, "] must be a 1-element float32 or float64 tensor, got ", step.scalar_type(),
                      " with ", step.sym_numel(), " elements (layout ", layout_name(step.layout()), ")");
    // Before any counter is written: the loops bump each counter's version, which throws for an inference
    // tensor, and must not leave the counters before it advanced.
    TORCH_CHECK(!step.is_inference() || c10::InferenceMode::is_enabled(), "state_steps[", i,
                "] is an inference tensor; the step advances it in place, which torch allows only inside "
                "InferenceMode");
    all_cpu = all_cpu && step.is_cpu();
  }
  return all_cpu;
}

void bump_versions(const OpArgs& a) {
  // Every list the schema marks mutable, grads included in the "keep" mode: torch's generated
  // ADInplaceOrView kernels bump every (a!) argument of its own fused optimizers the same way.
  for (at::TensorList list : {a.params, a.grads, a.square_avgs, a.acc_deltas, a.master_params, a.square_avg_scales,
                              a.acc_delta_scales}) {
    // An inference tensor has no version to bump (the validator refuses one the step writes): a grad the step
    // only reads may be one, as torch's optimizers take it.
    for (const at::Tensor& t : list) {
      if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
    }
  }
}

bool zeroes_grads_when_skipped(const OpArgs& a) {
  return a.found_inf.has_value() && a.grad_mode == int64_t(GradMode::kZero);
}

DenseGroup::DenseGroup(const OpArgs& a)
    : square_avg_scales_(a.square_avg_scales), acc_delta_scales_(a.acc_delta_scales),
      has_master_(!a.master_params.empty()), grad_written_(a.grad_mode != int64_t(GradMode::kKeep)) {
  const size_t n = a.params.size();
  rows_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = a.params[i];
    // A param that is itself not dense is staged contiguously; its companions then follow that layout.
    const at::Tensor& layout = p.is_non_overlapping_and_dense() ? p : layouts_.emplace_back(p.contiguous());
    Row& row = rows_.emplace_back();
    row[0] = add(p, layout, true);
    row[1] = add(a.grads[i], layout, grad_written_);
    row[2] = add(a.square_avgs[i], layout, true);
    row[3] = add(a.acc_deltas[i], layout, true);
    row[4] = has_master_ ? add(a.master_params[i], layout, true) : nullptr;
  }
}

const at::Tensor* DenseGroup::add(const at::Tensor& tensor, const at::Tensor& layout, bool written) {
  if (&tensor == &layout) return &tensor;
  at::Tensor dense;
  if (tensor.unsafeGetTensorImpl()->has_symbolic_sizes_strides() ||
      layout.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
    // Fake tensors with symbolic shapes (the Triton op traced by AOTAutograd with dynamic shapes), whose
    // numel() and strides() throw: the same policy in SymInts, whose comparisons guard the traced graph.
    if (tensor.sym_numel() == 0) return &tensor;
    if (tensor.is_non_overlapping_and_dense() && tensor.sym_strides() == layout.sym_strides()) return &tensor;
    dense = at::empty_strided_symint(layout.sym_sizes(), layout.sym_strides(), tensor.options());
  } else {
    if (tensor.numel() == 0 || dense_like(tensor, layout)) return &tensor;
    dense = at::empty_strided(layout.sizes(), layout.strides(), tensor.options());
  }
  dense.copy_(tensor);
  // A read-only copy is kept (undefined target) until finish(), after the launches that read it.
  return &staged_.emplace_back(written ? tensor : at::Tensor(), std::move(dense)).second;
}

TensorListPointers DenseGroup::pointers() {
  const size_t n = rows_.size();
  for (std::vector<void*>* list : {&param_, &grad_, &square_avg_, &acc_delta_}) list->assign(n, nullptr);
  master_.assign(has_master_ ? n : 0, nullptr);
  const bool quantized = !square_avg_scales_.empty();
  square_avg_scale_.assign(quantized ? n : 0, nullptr);
  acc_delta_scale_.assign(quantized ? n : 0, nullptr);
  numel_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const Row& row = rows_[i];
    numel_[i] = row[0]->numel();
    if (numel_[i] == 0) continue;  // null pointers, never dereferenced: empty tensors take no block
    param_[i] = mutable_data_of(*row[0]);
    // In the keep mode the kernels only read the grad: a copy-on-write grad stays shared.
    grad_[i] = grad_written_ ? mutable_data_of(*row[1]) : const_cast<void*>(const_data_of(*row[1]));
    square_avg_[i] = mutable_data_of(*row[2]);
    acc_delta_[i] = mutable_data_of(*row[3]);
    if (has_master_) master_[i] = static_cast<float*>(mutable_data_of(*row[4]));
    if (quantized) {  // (fp32, checked by the validator)
      square_avg_scale_[i] = static_cast<float*>(mutable_data_of(square_avg_scales_[i]));
      acc_delta_scale_[i] = static_cast<float*>(mutable_data_of(acc_delta_scales_[i]));
    }
  }
  return {param_.data(),
          grad_.data(),
          square_avg_.data(),
          acc_delta_.data(),
          has_master_ ? master_.data() : nullptr,
          numel_.data(),
          int64_t(n),
          quantized ? square_avg_scale_.data() : nullptr,
          quantized ? acc_delta_scale_.data() : nullptr};
}

void DenseGroup::finish() {
  for (auto& [target, dense] : staged_) {
    if (target.defined()) target.copy_(dense);
  }
  staged_.clear();
}

StepArgs make_step_args(const OpArgs& a, const c10::Device& device, std::vector<at::Tensor>& keep_alive) {
  StepArgs s{};
  s.lr = a.lr;
  s.lr_ptr = nullptr;
  if (a.lr_tensor.has_value() && a.lr_tensor->is_cpu()) {
    s.lr = a.lr_tensor->item<double>();  // a host read: copying it to a GPU would sync with the host
  } else if (a.lr_tensor.has_value()) {
    // A device lr is read by the kernel, as fp64 like a Python-float lr: no host sync, graph-capturable.
    // The copy is freed when this returns, but the caching allocator hands its memory out again only
    // to work ordered after the kernels on this stream, so they read it intact.
    at::Tensor lr = a.lr_tensor->to(device, at::kDouble).reshape({});
    keep_alive.push_back(lr);
    s.lr_ptr = lr.const_data_ptr<double>();
  }
  s.rho = a.rho;
  s.eps = a.eps;
  s.weight_decay = a.weight_decay;
  s.grad_scale_ptr = a.grad_scale.has_value() ? a.grad_scale->const_data_ptr<float>() : nullptr;
  s.found_inf_ptr = a.found_inf.has_value() ? a.found_inf->const_data_ptr<float>() : nullptr;
  s.maximize = a.maximize;
  s.stochastic_rounding = a.stochastic_rounding;
  s.rounding_key = uint32_t(a.rounding_key);
  return s;
}

}  // namespace adadelta_fused
