//! Typed errors of the library and the process exit codes they map to.

use std::path::PathBuf;

use thiserror::Error;

/// Process exit codes (documented in README "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Bad command line, bad webhook URL, refused `http://` host, bad `--filter`/`--select`.
    Usage = 2,
    /// The portal refused our credentials or permissions (401/403, "Access denied.").
    Auth = 3,
    /// The portal could not be reached or kept failing after all retries, or answered garbage.
    Portal = 4,
    /// The output location could not be written.
    Output = 5,
    /// A value from the portal could not be converted to its column type.
    Data = 6,
    /// A bug or an unexpected internal failure.
    Internal = 1,
}

/// An error returned by the portal (or by our transport while talking to it).
#[derive(Debug, Error)]
pub enum PortalError {
    #[error("{method}: the portal refused our credentials: {code} ({description}) [HTTP {status}]")]
    Auth { method: String, status: u16, code: String, description: String },
    #[error("{method}: the portal denied access: {code:?} ({description}) [HTTP {status}]")]
    Permission { method: String, status: u16, code: String, description: String },
    #[error("{method}: portal error {code:?}: {description} [HTTP {status}] after {attempts} attempt(s)")]
    Api { method: String, status: u16, code: String, description: String, attempts: u32 },
    #[error("{method}: {message} after {attempts} attempt(s)")]
    Transport { method: String, message: String, attempts: u32 },
    #[error("{method}: the portal answered with a body we cannot read (HTTP {status}): {message}")]
    Protocol { method: String, status: u16, message: String },
}

impl PortalError {
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            PortalError::Auth { .. } | PortalError::Permission { .. } => ExitKind::Auth,
            _ => ExitKind::Portal,
        }
    }
}

/// A value that does not fit its column type. Names the field, the record and the value.
#[derive(Debug, Error)]
#[error("field {field} of {record} {record_id}: cannot read {value} as {expected}")]
pub struct BadValue {
    /// What the record is: `lead` (the converter's default), `deal`, `contact`, `company`.
    pub record: &'static str,
    pub field: String,
    pub record_id: String,
    pub value: String,
    pub expected: String,
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Portal(#[from] PortalError),
    #[error(transparent)]
    BadValue(#[from] BadValue),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot encode Parquet for {path}: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    /// An object store (S3) operation failed after its retries.
    #[error("cannot write {what}: {message}")]
    Store { what: String, message: String },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("internal error: {0}")]
    Internal(String),
    /// Some of several runs of one command failed (`--entity all`); each error was reported as it happened. The
    /// exit code is the first failure's.
    #[error("{summary}")]
    Several { summary: String, first: Box<Error> },
}

impl Error {
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            Error::Usage(_) => ExitKind::Usage,
            Error::Portal(p) => p.exit_kind(),
            Error::BadValue(_) => ExitKind::Data,
            Error::Io { .. } | Error::Parquet { .. } | Error::Store { .. } => ExitKind::Output,
            Error::Arrow(_) | Error::Internal(_) => ExitKind::Internal,
            Error::Several { first, .. } => first.exit_kind(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
