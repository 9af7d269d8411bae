#include "worker/model/params.hpp"

#include <vector>

#include "kernels/check.hpp"
#include "worker/model/rng.hpp"

namespace mohge {

void ParamStore::rename(int index, const std::string& name) {
  ParamInfo& p = info_.at(static_cast<size_t>(index));
  if (p.name == name) return;
  const auto taken = by_name_.find(name);
  MOHGE_CHECK(taken == by_name_.end() || taken->second == index,
              "rename " << p.name << " to " << name << ": the name is taken");
  by_name_.erase(p.name);
  p.name = name;
  by_name_[name] = index;
}

int ParamStore::add(std::string name, std::vector<int64_t> shape, ParamInit init, float init_std,
                    bool weight_decay, bool replicated) {
  MOHGE_CHECK(backend_ == nullptr, "add() after allocate(): " << name);
  MOHGE_CHECK(!by_name_.contains(name), "duplicate parameter " << name);
  int64_t size = 1;
  for (int64_t d : shape) size *= d;
  ParamInfo p{std::move(name), std::move(shape), 0, size, weight_decay, replicated, init, init_std};
  total_ += size;
  if (replicated) replicated_ += size;
  by_name_[p.name] = static_cast<int>(info_.size());
  info_.push_back(std::move(p));
  return static_cast<int>(info_.size()) - 1;
}

void ParamStore::allocate(Backend& backend) {
  MOHGE_CHECK(backend_ == nullptr, "allocate() called twice");
  backend_ = &backend;
  // Offsets: replicated parameters first, then routed experts, each in registration order.
  int64_t rep = 0, own = replicated_;
  for (ParamInfo& p : info_) {
    int64_t& cursor = p.replicated ? rep : own;
    p.offset = cursor;
    cursor += p.size;
  }
  data_ = Buffer<float>(backend, total_);
  grad_ = Buffer<float>(backend, total_);
}

void ParamStore::initialize(uint64_t seed) {
  MOHGE_CHECK(backend_ != nullptr, "initialize() before allocate()");
  std::vector<float> host;
  for (const ParamInfo& p : info_) {
    host.resize(static_cast<size_t>(p.size));
    Rng rng(rng_stream_seed(seed, p.name));
    for (float& v : host) {
      v = p.init == ParamInit::kOnes    ? 1.0f
          : p.init == ParamInit::kZeros ? 0.0f
                                        : static_cast<float>(rng.normal() * p.init_std);
    }
    backend_->copy_from_host(data_.data() + p.offset, host.data(), sizeof(float) * host.size());
  }
}

int ParamStore::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? -1 : it->second;
}

void ParamStore::zero_grad() {
  backend_->fill_zero(grad_.data(), total_);
}

}  // namespace mohge
