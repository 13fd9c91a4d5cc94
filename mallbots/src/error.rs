//! The one error type of the application layer, split by what the caller must do: fix the
//! request (400), look elsewhere (404), authenticate (401), accept the current state (409), or
//! nothing — it is ours (500, logged once where it is turned into a response).

use herald::StoreError;

/// Why a command or query did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed or breaks a rule about its own values (blank name…).
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// No or a wrong admin token.
    #[error("a valid admin bearer token is required")]
    Unauthorized,
    /// The request is well-formed but the current state refuses it (enable twice…), or a
    /// concurrent writer got there first.
    #[error("{0}")]
    Conflict(String),
    /// Ours: the database or the broker failed.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    /// A refusal because of a value in the request.
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Self::Invalid(message.to_string())
    }

    /// A refusal because of the current state.
    pub fn conflict(message: impl std::fmt::Display) -> Self {
        Self::Conflict(message.to_string())
    }

    /// Our failure.
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        if e.is_conflict() {
            Self::Conflict("the resource was changed concurrently; retry".into())
        } else {
            Self::internal(e)
        }
    }
}

/// A refused command becomes what its domain error maps to; a store failure as above.
impl<E: std::error::Error + 'static> From<herald::aggregate::RepositoryError<E>> for AppError
where
    AppError: From<E>,
{
    fn from(e: herald::aggregate::RepositoryError<E>) -> Self {
        match e {
            herald::aggregate::RepositoryError::Rejected(e) => e.into(),
            herald::aggregate::RepositoryError::Store(e) => e.into(),
        }
    }
}

impl From<herald_sql::SqlError> for AppError {
    fn from(e: herald_sql::SqlError) -> Self {
        // Two requests racing to create the same row (e.g. repeats with one Idempotency-Key on
        // PostgreSQL, where writers are not serialised as on SQLite): the loser retries.
        if e.is_unique_violation() {
            return Self::Conflict("a concurrent request changed the same resource; retry".into());
        }
        Self::internal(e)
    }
}

impl From<herald::shredding::ShredError> for AppError {
    fn from(e: herald::shredding::ShredError) -> Self {
        Self::internal(e) // the vault could not be reached
    }
}

impl From<herald::CodecError> for AppError {
    fn from(e: herald::CodecError) -> Self {
        Self::internal(e)
    }
}

/// The result of an application operation.
pub type AppResult<T> = Result<T, AppError>;
