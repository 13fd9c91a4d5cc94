//! The one error type of the application layer, split by what the caller must do: fix the
//! request (400), look elsewhere (404), authenticate (401), accept the current state (409), or
//! nothing — it is ours (500, logged once where it is turned into a response).

use herald::StoreError;

/// Why a request holding the NUL character is refused, on REST and gRPC.
pub const NUL_REFUSED: &str = "no text may hold the NUL character (U+0000)";

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

    /// Our failure — unless the database refused a NUL character that got this far (see
    /// [`refuses_nul`]): that one is the request's, an [`AppError::Invalid`].
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let e = e.into();
        if refuses_nul(&*e) {
            return Self::Invalid(NUL_REFUSED.into());
        }
        Self::Internal(e)
    }
}

/// Whether `e`, or an error it wraps, is PostgreSQL refusing the NUL character (U+0000):
/// SQLSTATE 22021 `character_not_in_repertoire` (a TEXT value) or 22P05
/// `untranslatable_character` (`\u0000` in JSONB). REST and gRPC refuse NUL before any
/// statement runs; this is the safety net for a text that reaches the database some other way,
/// so that it is still the caller's error (400, `InvalidArgument`), never ours (500, `Internal`).
pub fn refuses_nul(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>()
            && matches!(db.code().as_deref(), Some("22021" | "22P05"))
        {
            return true;
        }
        next = e.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A PostgreSQL error with SQLSTATE `code`, as sqlx reports it.
    #[derive(Debug, thiserror::Error)]
    #[error("database said {0}")]
    struct Postgres(&'static str);

    impl sqlx::error::DatabaseError for Postgres {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    /// A failed statement as the stores report it: a `StoreError` around herald-sql's error
    /// around sqlx's.
    fn store_error(code: &'static str) -> StoreError {
        StoreError::backend(herald_sql::SqlError::Database(sqlx::Error::Database(Box::new(Postgres(code)))))
    }

    #[test]
    fn the_database_refusing_a_nul_character_is_the_callers_error() {
        for code in ["22021", "22P05"] {
            match AppError::from(store_error(code)) {
                AppError::Invalid(message) => assert_eq!(message, NUL_REFUSED),
                other => panic!("SQLSTATE {code}: {other:?}"),
            }
            let sql = herald_sql::SqlError::Database(sqlx::Error::Database(Box::new(Postgres(code))));
            assert!(matches!(AppError::from(sql), AppError::Invalid(_)), "SQLSTATE {code} from herald-sql");
        }
        assert!(matches!(AppError::from(store_error("57014")), AppError::Internal(_)), "another failure is ours");
    }
}
