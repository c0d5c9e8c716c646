//! The admin API's one authority rule (`ARCHITECTURE.md`, "Trust rules"), as pure
//! functions over what a key can do, so that every admin route asks the same question and
//! the answer is unit-tested.
//!
//! A key's *reach* is its owner's permissions (from the directory; all of them on a gate
//! without one) narrowed by its scopes, and its lifetime (`expires_at`; none means
//! forever). The rule, for a caller whose own key has reach `C`:
//!
//! 1. **Authority over owners.** Acting on a key of another owner, minting for another
//!    owner or moving a key to another owner needs `C`'s permissions to cover all of that
//!    owner's permissions. The caller's own owner needs nothing more.
//! 2. **Nothing wider than the caller.** A key the call produces (mint, the new key of a
//!    rotate), or a key a patch *widens* (see [`widens`]), must end with permissions
//!    within `C`'s and a lifetime that ends no later than `C`'s.
//!
//! Narrowing changes (revoke, delete, rename, description or metadata, fewer scopes, an
//! earlier expiry) need only rule 1, so an expiring admin key can still revoke a leaked
//! key of an owner it has authority over.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::record::KeyRecord;
use crate::user::Permissions;

/// What a key can do: its effective permissions, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reach {
    permissions: Permissions,
    until: Option<DateTime<Utc>>,
}

impl Reach {
    /// The reach of a key of an owner holding `owner`, with these `scopes` (`None`: no
    /// narrowing), living `until` (`None`: forever).
    pub(crate) fn new(
        owner: &Permissions,
        scopes: Option<&BTreeSet<String>>,
        until: Option<DateTime<Utc>>,
    ) -> Self {
        let permissions = match (owner, scopes) {
            (owner, None) => owner.clone(),
            (Permissions::All, Some(scopes)) => Permissions::Only(scopes.clone()),
            (Permissions::Only(held), Some(scopes)) => {
                Permissions::Only(held.intersection(scopes).cloned().collect())
            }
        };
        Self { permissions, until }
    }

    /// The reach of `record` for an owner holding `owner`.
    pub(crate) fn of(record: &KeyRecord, owner: &Permissions) -> Self {
        Self::new(owner, record.scopes.as_ref(), record.expires_at)
    }

    /// Whether these permissions include every one of `other`.
    fn covers_permissions(&self, other: &Permissions) -> bool {
        match (&self.permissions, other) {
            (Permissions::All, _) => true,
            (Permissions::Only(_), Permissions::All) => false,
            (Permissions::Only(mine), Permissions::Only(theirs)) => theirs.is_subset(mine),
        }
    }

    /// Whether this lifetime ends no earlier than `other`'s.
    fn outlives(&self, other: Option<DateTime<Utc>>) -> bool {
        match (self.until, other) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs <= mine,
        }
    }

    /// Whether `other` can do nothing this cannot, for no longer.
    fn covers(&self, other: &Reach) -> bool {
        self.covers_permissions(&other.permissions) && self.outlives(other.until)
    }
}

/// Why the rule refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The call touches another owner whose permissions the caller does not all hold.
    OwnerOutOfReach,
    /// The key produced or widened would hold a permission the caller lacks.
    WiderPermissions,
    /// The key produced or widened would outlive the caller's key.
    LongerLifetime,
}

impl Refusal {
    /// A stable code, for the JSON body and the logs.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Refusal::OwnerOutOfReach => "owner_out_of_reach",
            Refusal::WiderPermissions => "wider_permissions",
            Refusal::LongerLifetime => "longer_lifetime",
        }
    }

    /// A sentence for the JSON body.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::OwnerOutOfReach => {
                "the key's owner holds permissions that the calling key does not"
            }
            Refusal::WiderPermissions => {
                "the resulting key would hold permissions that the calling key does not"
            }
            Refusal::LongerLifetime => "the resulting key would outlive the calling key",
        }
    }
}

/// The rule. `caller` is the calling key's reach; `other_owners` the permissions of every
/// owner the call touches other than the caller's own (the target key's owner, the new
/// owner); `result` the reach of the key the call produces or widens, `None` when it only
/// narrows.
pub(crate) fn check(
    caller: &Reach,
    other_owners: &[&Permissions],
    result: Option<&Reach>,
) -> Result<(), Refusal> {
    if !other_owners
        .iter()
        .all(|owner| caller.covers_permissions(owner))
    {
        return Err(Refusal::OwnerOutOfReach);
    }
    if let Some(result) = result {
        if !caller.covers_permissions(&result.permissions) {
            return Err(Refusal::WiderPermissions);
        }
        if !caller.outlives(result.until) {
            return Err(Refusal::LongerLifetime);
        }
    }
    Ok(())
}

/// Whether changing `before` (owner holding `before_owner`) into `after` (owner holding
/// `after_owner`) widens the key: it acts for someone else, is switched back on, or can do
/// something, or live until a time, that it could not before.
pub(crate) fn widens(
    before: &KeyRecord,
    before_owner: &Permissions,
    after: &KeyRecord,
    after_owner: &Permissions,
) -> bool {
    after.owner != before.owner
        || (after.active && !before.active)
        || !Reach::of(before, before_owner).covers(&Reach::of(after, after_owner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn only(names: &[&str]) -> Permissions {
        Permissions::Only(set(names))
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn at(hour: u32) -> Option<DateTime<Utc>> {
        Utc.with_ymd_and_hms(2030, 1, 1, hour, 0, 0).single()
    }

    fn reach(owner: &Permissions, scopes: Option<&[&str]>, until: Option<DateTime<Utc>>) -> Reach {
        Reach::new(owner, scopes.map(set).as_ref(), until)
    }

    #[test]
    fn reach_is_owner_permissions_narrowed_by_scopes() {
        let all = Permissions::All;
        assert_eq!(reach(&all, None, None).permissions, Permissions::All);
        assert_eq!(reach(&all, Some(&["a"]), None).permissions, only(&["a"]));
        assert_eq!(
            reach(&only(&["a", "b"]), Some(&["b", "c"]), None).permissions,
            only(&["b"])
        );
        assert_eq!(reach(&only(&["a"]), None, None).permissions, only(&["a"]));
    }

    #[test]
    fn a_scoped_admin_cannot_produce_an_unscoped_key() {
        let caller = reach(&Permissions::All, Some(&["admin"]), None);
        let unscoped = reach(&Permissions::All, None, None);
        assert_eq!(
            check(&caller, &[], Some(&unscoped)),
            Err(Refusal::WiderPermissions)
        );
        let same = reach(&Permissions::All, Some(&["admin"]), None);
        assert_eq!(check(&caller, &[], Some(&same)), Ok(()));
        let narrower = reach(&Permissions::All, Some(&[]), None);
        assert_eq!(check(&caller, &[], Some(&narrower)), Ok(()));
    }

    #[test]
    fn other_owners_need_all_their_permissions_covered() {
        let ops = reach(&only(&["admin", "read"]), None, None);
        assert_eq!(
            check(&ops, &[&Permissions::All], None),
            Err(Refusal::OwnerOutOfReach)
        );
        assert_eq!(
            check(&ops, &[&only(&["read", "write"])], None),
            Err(Refusal::OwnerOutOfReach)
        );
        assert_eq!(check(&ops, &[&only(&["read"])], None), Ok(()));
        assert_eq!(check(&ops, &[&only(&[]), &only(&["admin"])], None), Ok(()));
        let root = reach(&Permissions::All, None, None);
        assert_eq!(check(&root, &[&Permissions::All], None), Ok(()));
    }

    #[test]
    fn an_expiring_caller_cannot_produce_a_longer_lived_key() {
        let caller = reach(&Permissions::All, None, at(12));
        for until in [None, at(13)] {
            let longer = reach(&Permissions::All, Some(&[]), until);
            assert_eq!(
                check(&caller, &[], Some(&longer)),
                Err(Refusal::LongerLifetime)
            );
        }
        for until in [at(12), at(11)] {
            let shorter = reach(&Permissions::All, None, until);
            assert_eq!(check(&caller, &[], Some(&shorter)), Ok(()));
        }
        // Narrowing calls ignore lifetimes: an expiring key can still revoke.
        assert_eq!(check(&caller, &[&Permissions::All], None), Ok(()));
    }

    fn record(
        owner: &str,
        active: bool,
        scopes: Option<&[&str]>,
        until: Option<DateTime<Utc>>,
    ) -> KeyRecord {
        let now = at(0).unwrap_or_default();
        KeyRecord {
            id: crate::KeyId::random(),
            format: crate::KeyFormat::Opaque,
            hash: None,
            name: "k".to_owned(),
            description: None,
            owner: owner.to_owned(),
            created_by: None,
            created_at: now,
            updated_at: now,
            expires_at: until,
            last_used_at: None,
            active,
            scopes: scopes.map(set),
            metadata: crate::record::Metadata::new(),
            ratelimits: Vec::new(),
            credits: None,
        }
    }

    #[test]
    fn widening_is_any_new_owner_activation_permission_or_time() {
        let all = Permissions::All;
        let before = record("alice", true, Some(&["a", "b"]), at(12));
        let same = |after: &KeyRecord| widens(&before, &all, after, &all);
        // Narrowing, or nothing that matters.
        assert!(!same(&before));
        assert!(!same(&record("alice", true, Some(&["a"]), at(12))));
        assert!(!same(&record("alice", true, Some(&["a", "b"]), at(11))));
        assert!(!same(&record("alice", false, Some(&["a", "b"]), at(12))));
        // Widening.
        assert!(same(&record("alice", true, None, at(12))));
        assert!(same(&record("alice", true, Some(&["a", "c"]), at(12))));
        assert!(same(&record("alice", true, Some(&["a", "b"]), None)));
        assert!(same(&record("alice", true, Some(&["a", "b"]), at(13))));
        assert!(same(&record("bob", true, Some(&["a"]), at(12))));
        let off = record("alice", false, Some(&["a"]), at(12));
        assert!(widens(
            &off,
            &all,
            &record("alice", true, Some(&["a"]), at(12)),
            &all
        ));
        // A new owner with fewer permissions is still another identity.
        assert!(widens(
            &before,
            &all,
            &record("bob", true, Some(&["a"]), at(12)),
            &only(&[])
        ));
    }
}
