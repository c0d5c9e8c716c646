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
//! 3. **No looser usage limits than the caller.** A key the call produces, or a key a
//!    patch *loosens* (removes a rate limit, raises its rate or burst, makes it manual,
//!    sets credits above what the key has left, adds or speeds up a refill, removes
//!    credits), must end at least as limited as `C`'s own key ([`Usage::bounds`]): for
//!    each of `C`'s rate limits, a limit of the same name, auto-applied if `C`'s is, with
//!    no higher rate (`limit / duration`) and no larger burst; if `C` has credits, credits
//!    no more than `C` has left *now* (read from the limiter), refilled to no more than
//!    `C`'s refill amount and no more often (none if `C`'s are never refilled). A caller
//!    without limits or credits may set any.
//!
//! Narrowing changes (revoke, delete, rename, description or metadata, fewer scopes, an
//! earlier expiry, tighter limits, fewer credits) need only rule 1, so an expiring admin
//! key can still revoke a leaked key of an owner it has authority over, and any admin
//! within reach can tighten a key's limits.
//!
//! Rule 3 bounds each key, not an owner: a limited caller can still mint several keys
//! each as limited as itself. Limits an owner cannot multiply that way are owner-shared
//! limits ([`KeygateBuilder::owner_ratelimits`](crate::KeygateBuilder::owner_ratelimits),
//! [`Owner::with_ratelimits`](crate::Owner::with_ratelimits)), which the host application
//! sets and no admin call can change.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::limits::{CreditPolicy, CreditRefill, RateLimit, RefillInterval};
use crate::record::KeyRecord;
use crate::user::Permissions;

/// How much a key may use: its rate limits and, with credits, how many it has left and
/// how it is refilled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    limits: Vec<RateLimit>,
    credits: Option<(u64, Option<CreditRefill>)>,
}

impl Usage {
    /// The usage limits of `record`, with `left` the credits it has left now (`None`: the
    /// policy's starting count, for a policy being set).
    pub(crate) fn of(record: &KeyRecord, left: Option<u64>) -> Self {
        Self {
            limits: record.ratelimits.clone(),
            credits: record
                .credits
                .as_ref()
                .map(|policy| (left.unwrap_or(policy.remaining), policy.refill)),
        }
    }

    /// The usage limits a key is about to be minted with.
    pub(crate) fn from_policy(limits: &[RateLimit], credits: Option<&CreditPolicy>) -> Self {
        Self {
            limits: limits.to_vec(),
            credits: credits.map(|policy| (policy.remaining, policy.refill)),
        }
    }

    /// Whether `other` is at least as limited as this (rule 3).
    pub(crate) fn bounds(&self, other: &Usage) -> bool {
        let limits = self.limits.iter().all(|mine| {
            other.limits.iter().any(|theirs| {
                theirs.name == mine.name
                    && (theirs.auto_apply || !mine.auto_apply)
                    && no_faster(theirs, mine)
                    && theirs.burst() <= mine.burst()
            })
        });
        let credits = match (&self.credits, &other.credits) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((mine, my_refill)), Some((theirs, their_refill))) => {
                theirs <= mine
                    && match (my_refill, their_refill) {
                        (_, None) => true,
                        (None, Some(_)) => false,
                        (Some(m), Some(t)) => t.amount <= m.amount && no_more_often(t, m),
                    }
            }
        };
        limits && credits
    }
}

/// `a`'s rate (`limit / duration`) is no higher than `b`'s (compared exactly, by cross
/// multiplication).
fn no_faster(a: &RateLimit, b: &RateLimit) -> bool {
    u128::from(a.limit).saturating_mul(u128::from(b.duration))
        <= u128::from(b.limit).saturating_mul(u128::from(a.duration))
}

/// Refill `a` comes no more often than refill `b` (daily is more often than monthly).
fn no_more_often(a: &CreditRefill, b: &CreditRefill) -> bool {
    !(a.interval == RefillInterval::Daily && b.interval == RefillInterval::Monthly)
}

/// What a key can do: its effective permissions, until when, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reach {
    permissions: Permissions,
    until: Option<DateTime<Utc>>,
    usage: Usage,
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
        Self {
            permissions,
            until,
            usage: Usage::default(),
        }
    }

    /// This reach, limited by `usage`.
    pub(crate) fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// The reach of `record` for an owner holding `owner`, with `left` credits left
    /// (see [`Usage::of`]).
    pub(crate) fn of(record: &KeyRecord, owner: &Permissions, left: Option<u64>) -> Self {
        Self::new(owner, record.scopes.as_ref(), record.expires_at)
            .with_usage(Usage::of(record, left))
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

    /// Whether `other` can do nothing this cannot, for no longer, using no more.
    fn covers(&self, other: &Reach) -> bool {
        self.covers_permissions(&other.permissions)
            && self.outlives(other.until)
            && self.usage.bounds(&other.usage)
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
    /// The key produced or loosened would be less limited than the caller's key.
    LooserLimits,
}

impl Refusal {
    /// A stable code, for the JSON body and the logs.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Refusal::OwnerOutOfReach => "owner_out_of_reach",
            Refusal::WiderPermissions => "wider_permissions",
            Refusal::LongerLifetime => "longer_lifetime",
            Refusal::LooserLimits => "looser_limits",
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
            Refusal::LooserLimits => {
                "the resulting key would have looser rate limits or more credits than the \
                 calling key"
            }
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
        if !caller.usage.bounds(&result.usage) {
            return Err(Refusal::LooserLimits);
        }
    }
    Ok(())
}

/// Whether changing `before` (owner holding `before_owner`, `before_left` credits left)
/// into `after` (owner holding `after_owner`, `after_left` credits left: the same count
/// unless the change sets credits) widens the key: it acts for someone else, is switched
/// back on, or can do something, live until a time, or use more, than it could before.
pub(crate) fn widens(
    before: (&KeyRecord, &Permissions, Option<u64>),
    after: (&KeyRecord, &Permissions, Option<u64>),
) -> bool {
    let (before, before_owner, before_left) = before;
    let (after, after_owner, after_left) = after;
    after.owner != before.owner
        || (after.active && !before.active)
        || !Reach::of(before, before_owner, before_left).covers(&Reach::of(
            after,
            after_owner,
            after_left,
        ))
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
        let same = |after: &KeyRecord| widens((&before, &all, None), (after, &all, None));
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
            (&off, &all, None),
            (&record("alice", true, Some(&["a"]), at(12)), &all, None),
        ));
        // A new owner with fewer permissions is still another identity.
        assert!(widens(
            (&before, &all, None),
            (&record("bob", true, Some(&["a"]), at(12)), &only(&[]), None),
        ));
    }

    fn limited(limits: Vec<RateLimit>, credits: Option<crate::limits::CreditPolicy>) -> KeyRecord {
        let mut r = record("alice", true, None, None);
        r.ratelimits = limits;
        r.credits = credits;
        r
    }

    #[test]
    fn usage_bounds_compare_rates_bursts_and_credits() {
        use crate::limits::CreditPolicy;
        let per_min = |n| RateLimit::new("r", n, 60_000);
        let caller = Usage::of(&limited(vec![per_min(100)], None), None);
        // The same rate in other units is no faster.
        let per_sec = Usage::of(&limited(vec![RateLimit::new("r", 1, 600)], None), None);
        assert!(caller.bounds(&per_sec));
        assert!(caller.bounds(&Usage::of(&limited(vec![per_min(99)], None), None)));
        for looser in [
            limited(vec![], None),
            limited(vec![per_min(101)], None),
            limited(vec![per_min(100).with_burst(101)], None),
            limited(vec![per_min(100).manual()], None),
            limited(vec![RateLimit::new("other", 1, 60_000)], None),
        ] {
            assert!(!caller.bounds(&Usage::of(&looser, None)), "{looser:?}");
        }
        let monthly = CreditPolicy::new(50).refill(CreditRefill::monthly(50, 1));
        let with_credits = Usage::of(&limited(vec![], Some(monthly.clone())), Some(10));
        let ok = CreditPolicy::new(10).refill(CreditRefill::monthly(50, 9));
        assert!(with_credits.bounds(&Usage::of(&limited(vec![], Some(ok)), None)));
        assert!(with_credits.bounds(&Usage::of(
            &limited(vec![], Some(CreditPolicy::new(0))),
            None
        )));
        for looser in [
            None,
            Some(CreditPolicy::new(11)),
            Some(CreditPolicy::new(1).refill(CreditRefill::daily(1))),
            Some(CreditPolicy::new(1).refill(CreditRefill::monthly(51, 1))),
        ] {
            let looser = limited(vec![], looser);
            assert!(
                !with_credits.bounds(&Usage::of(&looser, None)),
                "{looser:?}"
            );
        }
        // An unlimited caller bounds everything.
        assert!(Usage::default().bounds(&Usage::of(&limited(vec![], Some(monthly)), None)));
        assert!(Usage::default().bounds(&Usage::default()));
    }

    #[test]
    fn lifting_limits_or_topping_up_credits_widens() {
        use crate::limits::CreditPolicy;
        let all = Permissions::All;
        let before = limited(
            vec![RateLimit::new("r", 10, 1000)],
            Some(CreditPolicy::new(100)),
        );
        let w = |after: &KeyRecord, left| widens((&before, &all, Some(5)), (after, &all, left));
        assert!(!w(&before, Some(5)));
        assert!(!w(
            &limited(
                vec![RateLimit::new("r", 5, 1000)],
                Some(CreditPolicy::new(100))
            ),
            Some(5)
        ));
        assert!(!w(
            &limited(
                vec![RateLimit::new("r", 10, 1000)],
                Some(CreditPolicy::new(3))
            ),
            None
        ));
        assert!(w(&limited(vec![], Some(CreditPolicy::new(100))), Some(5)));
        assert!(w(&limited(vec![RateLimit::new("r", 10, 1000)], None), None));
        // Setting the policy again with its old start is a top-up from 5 to 100.
        assert!(w(
            &limited(
                vec![RateLimit::new("r", 10, 1000)],
                Some(CreditPolicy::new(100))
            ),
            None
        ));
        // The caller is refused a looser key than its own, not a tighter one.
        let caller = Reach::new(&all, None, None).with_usage(Usage::of(&before, Some(5)));
        let looser = Reach::of(&limited(vec![], None), &all, None);
        assert_eq!(
            check(&caller, &[], Some(&looser)),
            Err(Refusal::LooserLimits)
        );
        let tighter = Reach::of(
            &limited(
                vec![RateLimit::new("r", 1, 1000)],
                Some(CreditPolicy::new(5)),
            ),
            &all,
            None,
        );
        assert_eq!(check(&caller, &[], Some(&tighter)), Ok(()));
    }
}
