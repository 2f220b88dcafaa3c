// Every c10d name the backend relies on that is not part of c10d's stable
// Backend interface, in one place. Checked against torch 2.11, 2.13, 2.14.1
// and 2.15.0; see each NOTE for what happens when one moves.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Utils.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace fakepg::compat {

// NOTE [compat: split sizes]
// c10d::checkSplitSizes (c10d/Utils.hpp) is the validator gloo and NCCL run on
// all_to_all_single's split sizes, so users get the message they know. It is
// an internal helper; should it go, copy its 15 lines here.
inline void checkSplitSizes(
    const std::vector<int64_t>& split_sizes,
    const at::Tensor& tensor,
    int group_size) {
  c10d::checkSplitSizes(split_sizes, tensor, group_size);
}

// NOTE [compat: argument validators]
// c10d/Utils.hpp's assert* helpers are the checks gloo runs on a collective's
// arguments, each given the function that raises the complaint; the backend
// runs the same ones (backend.cpp, invalidArgument), so a bad argument reads
// as it does under gloo, with the op named. assertRootRank and
// assertSingleElementInput/Output are in Utils.hpp from 2.11 to 2.15.0. The
// list checks below joined Utils.hpp after 2.11 (before, they sat inside
// ProcessGroupGloo.cpp), so they are copied here with the same words, for every
// release to read the same.
using c10d::assertRootRank;
using c10d::assertSingleElementInput;
using c10d::assertSingleElementOutput;

using Complain = std::function<void(const std::string&)>;

inline void assertGatherOutputTensorList(
    const Complain& fn,
    const std::vector<std::vector<at::Tensor>>& outputTensors,
    int64_t size) {
  if (outputTensors.size() != 1) {
    fn("requires a single-element output list containing a list with " +
       std::to_string(size) + " tensors.");
  } else if (outputTensors[0].size() != static_cast<size_t>(size)) {
    fn("Incorrect output list size " + std::to_string(outputTensors[0].size()) +
       ". Output list size should be " + std::to_string(size) +
       ", same as size of the process group.");
  }
}

inline void assertScatterInputTensorList(
    const Complain& fn,
    const std::vector<std::vector<at::Tensor>>& inputTensors,
    int64_t size) {
  if (inputTensors.size() != 1) {
    fn("requires a single-element input list containing a list with " +
       std::to_string(size) + " tensors.");
  } else if (inputTensors[0].size() != static_cast<size_t>(size)) {
    fn("Incorrect input list size " + std::to_string(inputTensors[0].size()) +
       ". Input list size should be " + std::to_string(size) +
       ", same as size of the process group.");
  }
}

inline void assertAllgatherCoalescedOutputTensorLists(
    const Complain& fn,
    const std::vector<std::vector<at::Tensor>>& outputTensorLists,
    size_t inputTensorListSize,
    int64_t worldSize) {
  if (outputTensorLists.size() != static_cast<size_t>(worldSize)) {
    fn("output lists should be equal to world size");
  }
  for (const auto& list : outputTensorLists) {
    if (list.size() != inputTensorListSize) {
      fn("invalid output size: (expected length " +
         std::to_string(inputTensorListSize) + ", got " +
         std::to_string(list.size()) + ")");
    }
  }
}

inline void assertAllToAllTensorListSizes(
    const Complain& fn,
    size_t outputTensorListSize,
    size_t inputTensorListSize,
    int64_t worldSize) {
  if (inputTensorListSize != static_cast<size_t>(worldSize)) {
    fn("input tensor list size " + std::to_string(inputTensorListSize) +
       " does not match world size " + std::to_string(worldSize));
  }
  if (outputTensorListSize != static_cast<size_t>(worldSize)) {
    fn("output tensor list size " + std::to_string(outputTensorListSize) +
       " does not match world size " + std::to_string(worldSize));
  }
}

// NOTE [compat: PREMUL_SUM]
// The scaling factor of a PREMUL_SUM reduce op rides in a supplement. torch
// 2.11 names its type NCCLPreMulSumSupplement; later releases rename it
// PreMulSumSupplement and keep the old name as an alias, so the old name
// compiles everywhere this project supports.
using PreMulSumSupplement = c10d::NCCLPreMulSumSupplement;

// NOTE [compat: completed Work]
// c10d::Work has no constructor that makes completed work: the backend sets
// the protected members `completed_` and `exception_` from its subclass
// (backend.cpp, FakeWork), as torch's own FakeWork does. Present in every
// release since 1.x.

// NOTE [compat: deprecated overrides]
// `_allgather_base` and `_reduce_scatter_base` are deprecated names, yet
// c10d's dispatcher still routes all_gather_into_tensor and
// reduce_scatter_tensor of a single tensor to them (2.11 to 2.15.0), so the
// backend overrides them. Drop them when c10d stops calling them.

// NOTE [compat: the _single collectives]
// torch 2.14 renames c10d's single-tensor collectives after torchcomms
// (all_gather_single, reduce_scatter_single, ...): each new name forwards to
// the old one, so the old overrides keep serving them. gather_single (gather
// into one tensor) came with them and has no old name: FakeBackend defines
// it with the base's signature but without `override`, so it overrides where
// c10d::Backend has it (2.14.1, 2.15.0) and is an unused method before.

// NOTE [compat: Options::clone]
// c10d::Backend::Options gained `virtual intrusive_ptr<Options> clone()` in
// torch 2.14; FakeBackend::Options defines the same signature without
// `override`, so it overrides there and compiles alone before.

// gather into one tensor on a real backend: c10d::Backend::gather_single
// where it exists (2.14.1, 2.15.0; NOTE [compat: the _single collectives]).
template <typename B, typename = void>
struct HasGatherSingle : std::false_type {};
template <typename B>
struct HasGatherSingle<
    B,
    std::void_t<decltype(std::declval<B&>().gather_single(
        std::declval<at::Tensor&>(),
        std::declval<at::Tensor&>(),
        std::declval<const c10d::GatherOptions&>()))>> : std::true_type {};

template <typename B>
c10::intrusive_ptr<c10d::Work> gatherSingle(
    B& real,
    at::Tensor& output,
    at::Tensor& input,
    const c10d::GatherOptions& opts) {
  if constexpr (HasGatherSingle<B>::value) {
    return real.gather_single(output, input, opts);
  } else {
    TORCH_CHECK(false, "fakepg: gather_into_tensor on real ranks needs torch 2.14 or later");
  }
}

}  // namespace fakepg::compat
