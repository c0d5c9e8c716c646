//! The static user directory of the configuration file's `[users.<id>]` tables.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use keygate::{DirectoryError, Owner, UserDirectory};

use super::config::User;

/// The users the configuration file lists: a key whose owner is not listed is refused, and
/// each owner's permissions are those listed (`"*"`: every permission).
#[derive(Debug)]
pub(crate) struct StaticUsers {
    users: HashMap<String, Owner>,
}

impl StaticUsers {
    pub(crate) fn new(users: &BTreeMap<String, User>) -> Self {
        let users = users
            .iter()
            .map(|(id, user)| {
                let owner = if user.permissions.iter().any(|p| p == "*") {
                    Owner::unrestricted()
                } else {
                    Owner::with_permissions(user.permissions.iter().cloned())
                };
                let owner = if user.active {
                    owner
                } else {
                    owner.deactivated()
                };
                (id.clone(), owner)
            })
            .collect();
        Self { users }
    }
}

#[async_trait]
impl UserDirectory for StaticUsers {
    async fn owner(&self, user_id: &str) -> Result<Option<Owner>, DirectoryError> {
        Ok(self.users.get(user_id).cloned())
    }
}
