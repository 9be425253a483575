// The lmdl present-class step (SPEC §2.6; unimargin.heads.lmdl.fused.LMDLPresentStep) as a
// C++ autograd operator, torch.ops.unimargin_lmdl.present_step.
//
// Same orchestration as the Python LMDLPresentStep, line for line: the big products in
// ATen (the caller's BLAS), every other part in the C functions of lmdl_kernel.c, which
// this library does not link: their addresses come from the ctypes-loaded kernel through
// set_kernels() (one compiled copy of the maths, one build of it). What this file removes
// is the per-step Python cost (autograd.Function, ~15 tensor allocations and 4 ctypes calls
// of ~30 arguments each): ~200 us of a ~700 us step at B = 256, K = 100, d = 128.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdint>
#include <string>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// signatures of lmdl_kernel.c (REAL = float or double)
template <typename R>
struct Kernels {
  using Forward = void (*)(long, long, long, long, const R*, const R*, const R*, const int64_t*, const int64_t*,
                           const int64_t*, const R*, const R*, R*, const R*, const uint8_t*, double, double, double,
                           double, double, double, double, R*, R*, int64_t*, int64_t*, R*, R*, R*, uint8_t*);
  using Backward = void (*)(long, long, long, long, const R*, const R*, const R*, const int64_t*, const int64_t*,
                            const int64_t*, const int64_t*, const R*, const R*, double, double, double, double,
                            double, double, R*, R*, R*, R*, R*, R*);
  using Scatter = void (*)(long, long, const int64_t*, const int64_t*, const R*, const R*, R*, R*);
  Forward forward = nullptr;
  Backward backward = nullptr;
  Scatter scatter = nullptr;
};

using PresentFn = long (*)(long, long, const int64_t*, int64_t*, int64_t*, int64_t*);
using WorkSizeFn = long (*)(long, long, long);

PresentFn present_fn = nullptr;
WorkSizeFn work_size_fn = nullptr;
Kernels<float> k32;
Kernels<double> k64;

template <typename R>
const Kernels<R>& kernels();
template <>
const Kernels<float>& kernels<float>() { return k32; }
template <>
const Kernels<double>& kernels<double>() { return k64; }

template <typename T>
T* ptr(const at::Tensor& t) { return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr; }

// the refusal of create_graph=True: its text has one home, lmdl_kernel.NO_DOUBLE_BACKWARD (set_kernels)
std::string no_double_backward = "lmdl: second-order gradients are not supported through this step";

void set_kernels(std::vector<int64_t> addresses, std::string no_double_backward_message) {
  TORCH_CHECK(addresses.size() == 8, "unimargin_lmdl.set_kernels: expected 8 addresses, got ", addresses.size());
  no_double_backward = std::move(no_double_backward_message);
  present_fn = reinterpret_cast<PresentFn>(addresses[0]);
  work_size_fn = reinterpret_cast<WorkSizeFn>(addresses[1]);
  k32.forward = reinterpret_cast<Kernels<float>::Forward>(addresses[2]);
  k32.backward = reinterpret_cast<Kernels<float>::Backward>(addresses[3]);
  k32.scatter = reinterpret_cast<Kernels<float>::Scatter>(addresses[4]);
  k64.forward = reinterpret_cast<Kernels<double>::Forward>(addresses[5]);
  k64.backward = reinterpret_cast<Kernels<double>::Backward>(addresses[6]);
  k64.scatter = reinterpret_cast<Kernels<double>::Scatter>(addresses[7]);
}

struct PresentStep : public torch::autograd::Function<PresentStep> {
  // returns (loss, logits, CE, L_compact, L_margin, L_reg, present (P), centroid (P×d)); only the
  // first two carry a gradient
  static variable_list forward(AutogradContext* ctx, at::Tensor features, at::Tensor weight,
                               const c10::optional<at::Tensor>& maybe_bias,
                               at::Tensor labels, at::Tensor centroids, at::Tensor seen, double delta_v,
                               double delta_d, double momentum, double compact_coef, double margin_coef,
                               double reg_coef, double unit, bool update) {
    TORCH_CHECK(present_fn != nullptr, "unimargin_lmdl.present_step: set_kernels() was not called");
    ctx->set_materialize_grads(false);
    const at::Tensor bias = maybe_bias.has_value() ? *maybe_bias : at::Tensor();
    at::NoGradGuard no_grad;  // only this node is recorded (the ops below are its implementation)
    features = features.contiguous();
    weight = weight.contiguous();
    labels = labels.to(at::kLong).contiguous();
    const long batch = features.size(0), dim = features.size(1), num_classes = weight.size(0);
    auto long_opts = labels.options();
    at::Tensor index = at::empty({2 * num_classes + batch}, long_opts);
    int64_t* ix = ptr<int64_t>(index);
    const long n = present_fn(batch, num_classes, ptr<int64_t>(labels), ix, ix + 2 * num_classes, ix + num_classes);
    if (n < 0) {
      const long at_pos = -n - 1;
      TORCH_CHECK_VALUE(false, "labels must be in [0, num_classes=", num_classes, "), found label ",
                        labels[at_pos].item<int64_t>(), " at position ", at_pos);
    }
    at::Tensor present = index.slice(0, 0, n), rows = index.slice(0, 2 * num_classes);
    at::Tensor logits = bias.defined() ? at::addmm(bias, features, weight.t()) : at::mm(features, weight.t());
    at::Tensor log_prob = at::log_softmax(logits, 1);
    at::Tensor gram = at::mm(weight.index_select(0, present), weight.t());  // ranks candidates only
    at::Tensor out = at::empty({5}, features.options());
    at::Tensor centroid = at::empty({n, dim}, features.options());
    at::Tensor nearest = at::empty({n}, long_opts);
    at::Tensor order = at::empty({batch + n + 1}, long_opts);
    at::Tensor wsq = at::empty({num_classes}, features.options());
    at::Tensor work = at::empty({work_size_fn(batch, n, dim)}, features.options());
    // the kernel reads these raw and, with update, writes M and seen in place: no copies
    TORCH_CHECK_VALUE(weight.scalar_type() == features.scalar_type() && centroids.scalar_type() == features.scalar_type()
                          && (!bias.defined() || bias.scalar_type() == features.scalar_type()),
                      "present_step needs features, weight, bias and centroids of one dtype");
    TORCH_CHECK_VALUE(centroids.is_contiguous() && seen.is_contiguous() && seen.scalar_type() == at::kBool,
                      "present_step needs contiguous centroids and a contiguous bool seen buffer");
    if (bias.defined()) TORCH_CHECK_VALUE(bias.is_contiguous(), "present_step needs a contiguous bias");
    AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "lmdl_present_forward", [&] {
      kernels<scalar_t>().forward(
          batch, num_classes, dim, n, ptr<scalar_t>(features), ptr<scalar_t>(weight), ptr<scalar_t>(bias),
          ptr<int64_t>(labels), ptr<int64_t>(present), ptr<int64_t>(rows), ptr<scalar_t>(logits),
          ptr<scalar_t>(log_prob), ptr<scalar_t>(gram), ptr<scalar_t>(centroids), ptr<uint8_t>(seen), delta_v,
          delta_d, momentum, compact_coef, margin_coef, reg_coef, unit, ptr<scalar_t>(out), ptr<scalar_t>(centroid),
          ptr<int64_t>(nearest), ptr<int64_t>(order), ptr<scalar_t>(wsq), ptr<scalar_t>(work),
          update ? ptr<scalar_t>(centroids) : nullptr, update ? ptr<uint8_t>(seen) : nullptr);
    });
    ctx->save_for_backward({features, weight});
    ctx->saved_data["inter"] = std::vector<at::Tensor>{labels, present, rows, nearest, centroid, work, log_prob};
    ctx->saved_data["bias"] = bias.defined();
    ctx->saved_data["hp"] = std::vector<double>{delta_v, delta_d, compact_coef, margin_coef, reg_coef};
    // the terms as four scalars (HeadOutput.terms): selected here, not unbound in Python
    at::Tensor ce = out[1], compact = out[2], margin = out[3], reg = out[4];
    ctx->mark_non_differentiable({ce, compact, margin, reg, present, centroid});
    return {out[0], logits, ce, compact, margin, reg, present, centroid};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), no_double_backward);
    auto saved = ctx->get_saved_variables();
    at::Tensor features = saved[0], weight = saved[1];
    auto inter = ctx->saved_data["inter"].toTensorVector();
    at::Tensor labels = inter[0], present = inter[1], rows = inter[2], nearest = inter[3], centroid = inter[4],
               work = inter[5], log_prob = inter[6];
    const bool has_bias = ctx->saved_data["bias"].toBool();
    auto hp = ctx->saved_data["hp"].toDoubleVector();
    const at::Tensor& grad_loss = grads[0];
    const at::Tensor& grad_logits = grads[1];
    const double g = grad_loss.defined() ? grad_loss.item<double>() : 0.0;
    const long batch = features.size(0), dim = features.size(1), num_classes = weight.size(0), n = present.size(0);
    at::Tensor grad_z = log_prob.exp();
    at::Tensor grad_f = at::empty_like(features);
    at::Tensor grad_mean = at::empty({n, dim}, features.options());
    at::Tensor pair_grad = at::empty({2 * n, dim}, features.options());
    at::Tensor pair_gb = at::empty({2 * n}, features.options());
    at::Tensor grad_b = has_bias ? at::empty({num_classes}, features.options()) : at::Tensor();
    // the forward's bias is only read through its flag here: its values enter through log_prob
    AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "lmdl_present_backward", [&] {
      kernels<scalar_t>().backward(
          batch, num_classes, dim, n, ptr<scalar_t>(features), ptr<scalar_t>(weight),
          has_bias ? ptr<scalar_t>(grad_b) : nullptr, ptr<int64_t>(labels), ptr<int64_t>(present),
          ptr<int64_t>(rows), ptr<int64_t>(nearest), ptr<scalar_t>(centroid), ptr<scalar_t>(work), hp[0], hp[1],
          hp[2], hp[3], hp[4], g, ptr<scalar_t>(grad_z), ptr<scalar_t>(grad_f), ptr<scalar_t>(grad_mean),
          ptr<scalar_t>(pair_grad), ptr<scalar_t>(pair_gb), ptr<scalar_t>(grad_b));
    });
    if (grad_logits.defined()) {  // the logits are used downstream as well
      grad_z.add_(grad_logits);
      if (has_bias) grad_b.add_(grad_logits.sum(0));
    }
    grad_f.addmm_(grad_z, weight);
    at::Tensor grad_weight = grad_z.t().mm(features);
    AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "lmdl_present_scatter", [&] {
      kernels<scalar_t>().scatter(dim, n, ptr<int64_t>(present), ptr<int64_t>(nearest), ptr<scalar_t>(pair_grad),
                                  ptr<scalar_t>(pair_gb), ptr<scalar_t>(grad_weight), ptr<scalar_t>(grad_b));
    });
    variable_list result(14);  // one per forward input after ctx
    result[0] = grad_f;
    result[1] = grad_weight;
    result[2] = grad_b;
    return result;
  }
};

std::vector<at::Tensor> present_step(const at::Tensor& features, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias, const at::Tensor& labels,
                                     const at::Tensor& centroids, const at::Tensor& seen, double delta_v,
                                     double delta_d, double momentum, double compact_coef, double margin_coef,
                                     double reg_coef, double unit, bool update) {
  return PresentStep::apply(features, weight, bias, labels, centroids, seen,
                            delta_v, delta_d, momentum, compact_coef, margin_coef, reg_coef, unit, update);
}

}  // namespace

TORCH_LIBRARY(unimargin_lmdl, m) {
  m.def("set_kernels(int[] addresses, str no_double_backward_message) -> ()");
  m.def(
      "present_step(Tensor features, Tensor weight, Tensor? bias, Tensor labels, Tensor(a!) centroids, "
      "Tensor(b!) seen, float delta_v, float delta_d, float momentum, float compact_coef, float margin_coef, "
      "float reg_coef, float unit, bool update) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(unimargin_lmdl, CatchAll, m) { m.impl("set_kernels", set_kernels); }

TORCH_LIBRARY_IMPL(unimargin_lmdl, CompositeImplicitAutograd, m) { m.impl("present_step", present_step); }
