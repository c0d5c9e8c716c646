//! Key owners: the [`UserDirectory`] the host application implements.

use std::collections::BTreeSet;
use std::error::Error as StdError;

use async_trait::async_trait;

/// What the host application knows about a key's owner at request time.
///
/// A key inherits its owner's permissions, read fresh on every verify, so demoting or
/// deactivating a user takes effect on all their keys at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// A deactivated owner's keys are all refused.
    pub active: bool,
    /// What the owner may do.
    pub permissions: Permissions,
}

impl Owner {
    /// An active owner with these permissions.
    pub fn active<I, S>(permissions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            active: true,
            permissions: Permissions::Only(permissions.into_iter().map(Into::into).collect()),
        }
    }

    /// An active owner who may do everything.
    ///
    /// Answered by a [`UserDirectory`], it grants everything explicitly, admin included
    /// (see [`Principal::grants`](crate::Principal::grants)). A gate without a directory
    /// treats every owner as this implicitly: their keys [`allow`](crate::Principal::allows)
    /// everything, but are *granted* only what their own scopes name.
    pub fn unrestricted() -> Self {
        Self {
            active: true,
            permissions: Permissions::All,
        }
    }

    /// A deactivated owner.
    pub fn inactive() -> Self {
        Self {
            active: false,
            permissions: Permissions::Only(BTreeSet::new()),
        }
    }
}

/// An owner's permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Permissions {
    /// Everything; a key's scopes are then the only narrowing.
    All,
    /// Exactly these.
    Only(BTreeSet<String>),
}

impl Permissions {
    /// Whether `permission` is granted.
    pub fn allows(&self, permission: &str) -> bool {
        match self {
            Permissions::All => true,
            Permissions::Only(set) => set.contains(permission),
        }
    }
}

/// The host application's users, as keygate needs to see them.
///
/// ```
/// use async_trait::async_trait;
/// use keygate::{DirectoryError, Owner, UserDirectory};
///
/// struct Users;
///
/// #[async_trait]
/// impl UserDirectory for Users {
///     async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
///         Ok(match user_id {
///             "root" => Some(Owner::unrestricted()),
///             "alice" => Some(Owner::active(["library:read"])),
///             "mallory" => Some(Owner::inactive()),
///             _ => None,
///         })
///     }
/// }
/// ```
#[async_trait]
pub trait UserDirectory: Send + Sync + 'static {
    /// The user with this id: `Ok(None)` if there is none (deleted), `Err` if the directory
    /// could not be asked (keygate then answers "unavailable", never "invalid key").
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError>;
}

/// A failure of the user directory.
#[derive(Debug, thiserror::Error)]
#[error("user directory failed")]
pub struct DirectoryError(#[source] pub Box<dyn StdError + Send + Sync>);

impl DirectoryError {
    /// Wraps the underlying error, keeping it as the source.
    pub fn new(error: impl StdError + Send + Sync + 'static) -> Self {
        Self(Box::new(error))
    }
}
