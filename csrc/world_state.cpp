#include "world_state.hpp"

#include <c10/util/Exception.h>

#include <algorithm>

#include "exact.hpp"
#include "text.hpp"

namespace fakepg {

namespace {

constexpr const char* kOpNames[kNumOps] = {
#define FAKEPG_OP(name, fr_name, traits, fr_sizes) #name,
#define FAKEPG_ALIAS(public_name, name)
#include "ops.def"
#undef FAKEPG_ALIAS
#undef FAKEPG_OP
};

constexpr uint8_t kOpTraits[kNumOps] = {
#define FAKEPG_OP(name, fr_name, traits, fr_sizes) (traits),
#define FAKEPG_ALIAS(public_name, name)
#include "ops.def"
#undef FAKEPG_ALIAS
#undef FAKEPG_OP
};

int64_t bytesOf(const std::vector<at::Tensor>& ts) {
  int64_t b = 0;
  for (const auto& t : ts) {
    b += static_cast<int64_t>(t.numel()) * t.element_size();
  }
  return b;
}

}  // namespace

std::exception_ptr distBackendError(const std::string& msg) {
  try {
    C10_THROW_ERROR(DistBackendError, msg);
  } catch (...) {
    return std::current_exception();
  }
}

const char* opName(Op op) {
  return kOpNames[static_cast<int>(op)];
}

bool opHas(Op op, uint8_t traits) {
  return (kOpTraits[static_cast<int>(op)] & traits) == traits;
}

WorldState::WorldState(
    Values values,
    bool record,
    int world_size,
    std::vector<int64_t> running)
    : values_(values),
      record_(record),
      world_size_(world_size),
      running_(std::move(running)),
      slots_(values == Values::exact ? world_size : 1),
      calls_(slots_),
      total_calls_(slots_, 0) {
  TORCH_CHECK(world_size >= 1, cat("fakepg: world size ", world_size));
  TORCH_CHECK(
      running_.empty() || values == Values::exact,
      "fakepg: only an exact world runs some of its ranks");
  if (!running_.empty()) {
    run_slot_.assign(world_size, -1);
    for (size_t slot = 0; slot < running_.size(); ++slot) {
      const auto rank = running_[slot];
      TORCH_CHECK(
          rank >= 0 && rank < world_size && run_slot_[rank] < 0,
          cat("fakepg: running rank ", rank, " is outside a world of ", world_size, " or given twice"));
      run_slot_[rank] = static_cast<int>(slot);
    }
  }
  if (values == Values::exact) {
    scheduler_ = c10::make_intrusive<Scheduler>(
        running_.empty() ? world_size : static_cast<int>(running_.size()));
  }
}

bool WorldState::allRun(const std::vector<int64_t>& ranks) const {
  if (running_.empty()) {
    return true;
  }
  if (ranks.empty()) {
    return static_cast<int>(running_.size()) == world_size_;
  }
  return std::all_of(ranks.begin(), ranks.end(), [&](int64_t r) {
    return run_slot_.at(r) >= 0;
  });
}

WorldState::~WorldState() = default;

std::shared_ptr<Exchange> WorldState::exchange(
    const std::string& name,
    const std::vector<int64_t>& ranks,
    int size) {
  // A group is the same group on every member when its name and its ranks
  // agree (DeviceMesh gives groups of different ranks the same name).
  std::string key = name;
  for (auto r : ranks) {
    key += "," + std::to_string(r);
  }
  auto& found = exchanges_[key];
  if (!found) {
    found = std::make_shared<Exchange>(*this, name, ranks, size);
  }
  return found;
}

std::string WorldState::mismatchText(const Mismatch& m) const {
  std::string text = mismatch_source_ ? mismatch_source_(m) : std::string();
  if (text.empty()) {
    text = cat(
        "ranks ",
        m.a->global_rank,
        " and ",
        m.b->global_rank,
        " issue calls that do not match on group '",
        m.group,
        "'",
        m.seq ? cat(" at its call ", m.seq) : std::string());
  }
  return "fakepg: " + text;
}

void WorldState::startRun(std::vector<c10::intrusive_ptr<Gate>> gates) {
  TORCH_CHECK(scheduler_, "fakepg: only exact worlds run their ranks");
  exchanges_.clear();
  scheduler_->start(std::move(gates));
}

int64_t WorldState::callCount(int op, int rank) const {
  int64_t n = 0;
  for (int s = 0; s < slots_; ++s) {
    if (rank < 0 || slots_ == 1 || s == rank) {
      n += op < 0 ? total_calls_[s] : calls_[s].at(op);
    }
  }
  return n;
}

std::vector<size_t> WorldState::indicesOf(int rank) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < records_.size(); ++i) {
    if (issuedBy(records_[i], rank)) {
      out.push_back(i);
    }
  }
  return out;
}

void WorldState::clearLog(int rank) {
  if (rank < 0) {
    records_.clear();
    shapes_.clear();
    sites_.clear();
    return;
  }
  // Shapes of the records dropped stay in shapes_ until the log is cleared
  // whole: records keep their offsets.
  std::vector<Record> kept;
  std::vector<int32_t> kept_sites;
  for (size_t i = 0; i < records_.size(); ++i) {
    if (!issuedBy(records_[i], rank)) {
      kept.push_back(records_[i]);
      if (!sites_.empty()) {
        kept_sites.push_back(site(i));
      }
    }
  }
  records_ = std::move(kept);
  sites_ = std::move(kept_sites);
}

int WorldState::addGroup(GroupInfo info) {
  groups_.push_back(std::move(info));
  return static_cast<int>(groups_.size() - 1);
}

int64_t WorldState::armFault(int op, int64_t nth, FailAt at, int rank) {
  TORCH_CHECK(op >= -1 && op < kNumOps, cat("fakepg: no op with code ", op));
  TORCH_CHECK(nth >= 0, cat("fakepg: nth must be >= 0, got ", nth));
  faults_.push_back(Fault{next_fault_id_, op, nth, at, rank});
  return next_fault_id_++;
}

bool WorldState::disarmFault(int64_t id) {
  auto it = std::find_if(faults_.begin(), faults_.end(), [id](const Fault& f) {
    return f.id == id;
  });
  if (it == faults_.end()) {
    return false;
  }
  faults_.erase(it);
  return true;
}

bool WorldState::isArmed(int64_t id) const {
  return std::any_of(faults_.begin(), faults_.end(), [id](const Fault& f) {
    return f.id == id;
  });
}

void WorldState::recordCall(
    Op op,
    int group,
    const std::vector<at::Tensor>& inputs,
    uint8_t reduce_op,
    int32_t peer,
    uint8_t flags) {
  Record r{};
  r.op = op;
  r.reduce_op = reduce_op;
  r.dtype = inputs.empty() ? int8_t(-1)
                           : static_cast<int8_t>(inputs[0].scalar_type());
  r.flags = flags;
  r.group = group;
  r.peer = peer;
  r.ntensors = static_cast<uint32_t>(inputs.size());
  r.shape_offset = shapes_.size();
  r.bytes = bytesOf(inputs);
  for (const auto& t : inputs) {
    const auto sizes = t.sizes();
    shapes_.push_back(static_cast<int64_t>(sizes.size()));
    shapes_.insert(shapes_.end(), sizes.begin(), sizes.end());
  }
  if (site_source_ || !sites_.empty()) {
    sites_.resize(records_.size(), kNoSite);
    sites_.push_back(last_site_);
  }
  records_.push_back(r);
}

std::exception_ptr WorldState::begin(
    Op op,
    int group,
    const std::vector<at::Tensor>& inputs,
    uint8_t reduce_op,
    int32_t peer,
    bool any_source) {
  const int code = static_cast<int>(op);
  const int issuer = groups_.at(group).global_rank;
  const int slot = slots_ == 1 ? 0 : issuer;
  const int64_t nth_of_op = ++calls_[slot][code];
  const int64_t nth_overall = ++total_calls_[slot];
  last_site_ = site_source_ ? site_source_() : kNoSite;

  const Fault* fired = nullptr;
  for (const auto& f : faults_) {
    if ((f.op != -1 && f.op != code) || (f.rank >= 0 && f.rank != issuer)) {
      continue;
    }
    const int64_t n = f.op == -1 ? nth_overall : nth_of_op;
    if (f.nth == 0 || f.nth == n) {
      fired = &f;
      break;
    }
  }
  if (record_) {
    recordCall(
        op,
        group,
        inputs,
        reduce_op,
        peer,
        (fired ? kFailed : 0) | (any_source ? kAnySource : 0) |
            (in_object_collective_ ? kObject : 0));
  }
  if (!fired) {
    return nullptr;
  }
  const auto& g = groups_.at(group);
  const std::string label = label_source_ ? label_source_(g.name) : std::string();
  auto error = distBackendError(
      cat("fakepg: injected fault in ",
          kOpNames[code],
          " (call ",
          nth_of_op,
          " of ",
          kOpNames[code],
          slots_ == 1 ? std::string(" in this world")
                      : cat(" by rank ", issuer),
          ", group ",
          label.empty() ? cat("'", g.name, "'") : label,
          " of size ",
          g.size,
          ")"));
  const FailAt at = fired->at;
  if (fired->nth != 0) {
    // One-shot: the n-th call fails, later calls succeed.
    disarmFault(fired->id);
  }
  if (at == FailAt::issue) {
    std::rethrow_exception(error);
  }
  return error;
}

std::vector<int64_t> WorldState::shapesOf(const Record& r) const {
  auto first = shapes_.begin() + static_cast<std::ptrdiff_t>(r.shape_offset);
  auto last = first;
  for (uint32_t i = 0; i < r.ntensors; ++i) {
    last += 1 + *last;
  }
  return std::vector<int64_t>(first, last);
}

int64_t WorldState::count(int op, int rank) const {
  if (op < 0 && rank < 0) {
    return static_cast<int64_t>(records_.size());
  }
  return std::count_if(
      records_.begin(), records_.end(), [this, op, rank](const Record& r) {
        return (op < 0 || static_cast<int>(r.op) == op) && issuedBy(r, rank);
      });
}

int64_t WorldState::totalBytes(int op, int rank) const {
  int64_t total = 0;
  for (const auto& r : records_) {
    if ((op < 0 || static_cast<int>(r.op) == op) && issuedBy(r, rank)) {
      total += r.bytes;
    }
  }
  return total;
}

}  // namespace fakepg
