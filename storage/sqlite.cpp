#include "storage/sqlite.hpp"

#include <new>

namespace mohge::db {
namespace {

// "UNIQUE constraint failed: jobs.user_id, jobs.idempotency_key" → "idempotency_key";
// "CHECK constraint failed: role" → "role". Empty when the message has another shape.
std::string constraint_field(const std::string& message) {
  const size_t colon = message.rfind(": ");
  if (colon == std::string::npos) return "";
  std::string last = message.substr(colon + 2);
  const size_t comma = last.rfind(", ");
  if (comma != std::string::npos) last = last.substr(comma + 2);
  const size_t dot = last.rfind('.');
  if (dot != std::string::npos) last = last.substr(dot + 1);
  for (char c : last) {
    if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
      return "";
  }
  return last;
}

}  // namespace

Error sqlite_error(sqlite3* db, int rc, const std::string& context) {
  if (rc == SQLITE_NOMEM) throw std::bad_alloc();
  const std::string detail = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Error{ErrorCode::kUnavailable,
                   context + ": database is busy (" + detail + "); try again later", ""};
    case SQLITE_READONLY:
      return Error{ErrorCode::kFailedPrecondition,
                   context + ": the database is open read-only (" + detail + ")", ""};
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return Error{ErrorCode::kDataLoss, context + ": " + detail, ""};
    case SQLITE_CONSTRAINT:
      switch (rc) {
        case SQLITE_CONSTRAINT_UNIQUE:
        case SQLITE_CONSTRAINT_PRIMARYKEY: {
          std::string field = constraint_field(detail);
          return Error{ErrorCode::kAlreadyExists,
                       context + ": a row with this " + (field.empty() ? "key" : field) +
                           " already exists (" + detail + ")",
                       field};
        }
        case SQLITE_CONSTRAINT_FOREIGNKEY:
          return Error{ErrorCode::kNotFound,
                       context + ": a referenced row does not exist (" + detail + ")", ""};
        case SQLITE_CONSTRAINT_CHECK:
        case SQLITE_CONSTRAINT_NOTNULL:
          return Error{ErrorCode::kInvalidArgument, context + ": " + detail,
                       constraint_field(detail)};
        default:
          break;
      }
      break;
    default:
      break;
  }
  return Error{ErrorCode::kInternal, context + ": " + detail, ""};
}

Result<Statement> Statement::prepare(sqlite3* db, std::string_view sql, bool persistent,
                                     const std::string& context) {
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                    persistent ? SQLITE_PREPARE_PERSISTENT : 0, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return sqlite_error(db, rc, context);
  }
  return Statement(stmt);
}

Result<StatementUse> Database::use(const std::string& sql, const std::string& what) {
  auto it = cache_.find(sql);
  if (it == cache_.end()) {
    Result<Statement> s = Statement::prepare(conn_.get(), sql, true, file_ + ": " + what);
    if (!s.ok()) return s.error();
    it = cache_.emplace(sql, std::move(s).value()).first;
  }
  return StatementUse(&it->second);
}

Transaction::~Transaction() {
  // A failed statement may already have rolled the transaction back (autocommit is on again).
  if (open_ && !sqlite3_get_autocommit(db_.get())) {
    sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }
}

Status Transaction::begin(bool write) {
  Result<int64_t> r = db_.exec("begin", write ? "BEGIN IMMEDIATE" : "BEGIN");
  if (!r.ok()) return r.error();
  open_ = true;
  return {};
}

Status Transaction::commit() {
  Result<int64_t> r = db_.exec("commit", "COMMIT");
  if (!r.ok()) return r.error();
  open_ = false;
  return {};
}

}  // namespace mohge::db
