//! The one place where driftdb errors become PostgreSQL ERRORs: a SQLSTATE, a message that names
//! the object, and a DETAIL and HINT where they help. Core errors (`driftdb_core`) are converted
//! here, at the edge, and nowhere else.
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// A fully described user-facing error.
pub struct DriftError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl DriftError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        DriftError { code, message: message.into(), detail: None, hint: None }
    }
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
    /// Raise as an ERROR: never returns (PostgreSQL longjmps out through pgrx's guard).
    #[track_caller]
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "driftdb");
        if let Some(d) = self.detail {
            report = report.set_detail(d);
        }
        if let Some(h) = self.hint {
            report = report.set_hint(h);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}
