// Paths that peers and users give (job data, checkpoint folders, run folders) are relative to
// the storage root and must stay inside it.
#pragma once

#include <string>

namespace mohge {

/// True when `path` is relative and stays inside whatever root it is joined to, read
/// lexically: not empty, not absolute, no ".." component, no NUL, at most 1024 bytes.
/// (Symlinks inside the storage root are its owner's business: the root is trusted.)
bool path_is_confined(const std::string& path);

}  // namespace mohge
