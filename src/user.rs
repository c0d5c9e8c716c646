//! Key owners: the [`UserDirectory`] the host application implements.

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::sync::Arc;

use async_trait::async_trait;

/// What the host application knows about a key's owner at request time.
///
/// A key inherits its owner's permissions, read fresh on every verify, so demoting or
/// deactivating a user takes effect on all their keys at once.
///
/// Build one with [`with_permissions`](Self::with_permissions),
/// [`unrestricted`](Self::unrestricted) or [`inactive`](Self::inactive) (or
/// [`deactivated`](Self::deactivated) to keep the permissions of a deactivated owner):
///
/// ```
/// use keygate::Owner;
///
/// let alice = Owner::with_permissions(["library:read", "library:write"]);
/// assert!(alice.active && alice.permissions.allows("library:write"));
/// assert!(!Owner::unrestricted().deactivated().active);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Owner {
    /// A deactivated owner's keys are all refused.
    pub active: bool,
    /// What the owner may do.
    pub permissions: Permissions,
    /// Rate limits shared by all of this owner's keys; `None`: the gate's default
    /// ([`KeygateBuilder::owner_ratelimits`](crate::KeygateBuilder::owner_ratelimits)).
    /// See [`crate::limits`].
    pub ratelimits: Option<Vec<crate::limits::RateLimit>>,
}

impl Owner {
    /// An active owner with these permissions.
    pub fn with_permissions<I, S>(permissions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            active: true,
            permissions: Permissions::Only(permissions.into_iter().map(Into::into).collect()),
            ratelimits: None,
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
            ratelimits: None,
        }
    }

    /// A deactivated owner with no permissions: every key they own is refused.
    pub fn inactive() -> Self {
        Self {
            active: false,
            permissions: Permissions::Only(BTreeSet::new()),
            ratelimits: None,
        }
    }

    /// This owner, with rate limits shared by all of their keys (instead of the gate's
    /// default, [`KeygateBuilder::owner_ratelimits`](crate::KeygateBuilder::owner_ratelimits));
    /// an empty list: none. Limits that fail [`validate_ratelimits`](crate::limits::validate_ratelimits)
    /// are refused at verify as a directory failure (503), never ignored.
    ///
    /// ```
    /// use keygate::limits::RateLimit;
    /// use keygate::Owner;
    ///
    /// let team = Owner::unrestricted().with_ratelimits([RateLimit::new("requests", 1000, 60_000)]);
    /// assert_eq!(team.ratelimits.unwrap().len(), 1);
    /// ```
    #[must_use]
    pub fn with_ratelimits(
        mut self,
        limits: impl IntoIterator<Item = crate::limits::RateLimit>,
    ) -> Self {
        self.ratelimits = Some(limits.into_iter().collect());
        self
    }

    /// This owner, deactivated (their permissions kept): every key they own is refused.
    #[must_use]
    pub fn deactivated(self) -> Self {
        Self {
            active: false,
            ..self
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
///             "alice" => Some(Owner::with_permissions(["library:read"])),
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

    /// The answer to [`owner`](Self::owner) without waiting and shared, for directories
    /// that hold their users in memory: verify then neither boxes a future nor copies the
    /// owner per request. `None`, the default, means "ask [`owner`](Self::owner)". When it
    /// answers, it must answer as `owner` would.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use async_trait::async_trait;
    /// use keygate::{DirectoryError, Owner, UserDirectory};
    ///
    /// struct Users {
    ///     alice: Arc<Owner>,
    /// }
    ///
    /// #[async_trait]
    /// impl UserDirectory for Users {
    ///     async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
    ///         Ok((user_id == "alice").then(|| Owner::clone(&self.alice)))
    ///     }
    ///
    ///     fn owner_now(
    ///         &self,
    ///         user_id: &str,
    ///     ) -> Option<Result<Option<Arc<Owner>>, DirectoryError>> {
    ///         Some(Ok((user_id == "alice").then(|| Arc::clone(&self.alice))))
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`owner`](Self::owner), inside the `Some`.
    fn owner_now(&self, user_id: &str) -> Option<Result<Option<Arc<Owner>>, DirectoryError>> {
        let _ = user_id;
        None
    }

    /// The users an admin may pick as the owner of a new key, for the admin page's user
    /// picker (the admin API's `GET /users`): at most
    /// [`MAX_PAGE`](crate::bounds::MAX_PAGE) are shown. `Ok(None)`, the default, means the
    /// directory does not list its users; the page then asks for a user id instead.
    ///
    /// Listing grants nothing: minting for a listed user still needs the caller's authority
    /// over them (see [`crate::admin`]).
    ///
    /// ```
    /// use async_trait::async_trait;
    /// use keygate::{DirectoryError, DirectoryUser, Owner, UserDirectory};
    ///
    /// struct Users;
    ///
    /// #[async_trait]
    /// impl UserDirectory for Users {
    ///     async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
    ///         Ok((user_id == "alice").then(|| Owner::with_permissions(["library:read"])))
    ///     }
    ///
    ///     async fn users(&self) -> Result<Option<Vec<DirectoryUser>>, DirectoryError> {
    ///         Ok(Some(vec![DirectoryUser::new("alice").name("Alice Liddell")]))
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`DirectoryError`] when the directory could not be asked (the API answers 503).
    async fn users(&self) -> Result<Option<Vec<DirectoryUser>>, DirectoryError> {
        Ok(None)
    }
}

/// One user as [`UserDirectory::users`] lists them: the id keys are minted for, and a name
/// to show beside it.
///
/// ```
/// use keygate::DirectoryUser;
///
/// let alice = DirectoryUser::new("u-17").name("Alice");
/// assert_eq!((alice.id.as_str(), alice.name.as_deref()), ("u-17", Some("Alice")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DirectoryUser {
    /// The user id (a key's `userId`).
    pub id: String,
    /// A display name (e.g. the username), if the directory has one.
    pub name: Option<String>,
}

impl DirectoryUser {
    /// The user `id`, without a display name.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: None,
        }
    }

    /// Sets the display name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// A failure of the user directory.
///
/// ```
/// use keygate::DirectoryError;
///
/// let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "users db timed out");
/// let error = DirectoryError::new(io);
/// assert_eq!(error.into_inner().to_string(), "users db timed out");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("user directory failed")]
pub struct DirectoryError(#[source] Box<dyn StdError + Send + Sync>);

impl DirectoryError {
    /// Wraps the underlying error, keeping it as the source.
    pub fn new(error: impl StdError + Send + Sync + 'static) -> Self {
        Self(Box::new(error))
    }

    /// The underlying error.
    pub fn into_inner(self) -> Box<dyn StdError + Send + Sync> {
        self.0
    }
}
