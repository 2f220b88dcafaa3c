// Value semantics: what a fake collective writes into its outputs.
// See NOTE [Uniform values] and NOTE [Fast paths] in values.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/distributed/c10d/Types.hpp>

#include <cstdint>
#include <vector>

namespace fakepg {

// dst = flat(src)[offset : offset + dst.numel()), dst read flat too.
void copyFlat(const at::Tensor& dst, const at::Tensor& src, int64_t offset = 0);

// Every one of `n` equal chunks of `out` = flat(in)[offset : offset +
// out.numel() / n).
void fillChunks(
    const at::Tensor& out,
    const at::Tensor& in,
    int64_t n,
    int64_t offset = 0);

// Reduce `t` in place as `n` ranks holding `t` each would: NOTE [Uniform
// values].
void reduceUniform(at::Tensor& t, const c10d::ReduceOp& op, int64_t n);

// out = chunk `index` of flat(in) (chunks of out.numel()), then, when
// `uniform`, reduced over `n` equal ranks: reduce_scatter's result.
void reduceScatterChunk(
    at::Tensor& out,
    const at::Tensor& in,
    int64_t index,
    const c10d::ReduceOp& op,
    int64_t n,
    bool uniform);

// all_to_all_single: NOTE [all_to_all under uniform values]. The splits are
// complete (one per rank) and already validated.
void allToAllUniform(
    at::Tensor& output,
    const at::Tensor& input,
    const std::vector<int64_t>& in_splits,
    int rank,
    int size);
// torch's stock fake approximation: each output split repeats the start of
// the input.
void allToAllCopy(
    at::Tensor& output,
    const at::Tensor& input,
    const std::vector<int64_t>& out_splits,
    bool even);

}  // namespace fakepg
