//! Mint a key, verify it, revoke it, and watch the refusal.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use chrono::TimeDelta;
use keygate::{Keygate, MemoryStore, NewKey, Pepper};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a real server the pepper comes from a secret store or the environment, never
    // from the database that holds the hashes.
    let gate = Keygate::builder(
        MemoryStore::new(),
        Pepper::new(1, b"quickstart pepper: replace me, 32+ bytes")?,
    )
    .prefix("abs")
    .build()?;

    // An admin mints a key for a user. The plaintext is shown this once.
    let issued = gate
        .mint(
            NewKey::new("Backup Script", "user-1")
                .created_by("admin")
                .expires_in(TimeDelta::days(30)),
        )
        .await?;
    println!("minted {} for {}", issued.record.id, issued.record.owner);
    println!("key (shown once): {}", issued.key.expose());

    // What a script sends: `Authorization: Bearer <key>`.
    let header = format!("Bearer {}", issued.key.expose());
    let principal = gate.verify_header(&header).await?;
    println!(
        "verified: key {:?} acts for {}, expires {}",
        principal.key_name(),
        principal.owner_id(),
        principal
            .expires_at()
            .map_or_else(|| "never".to_owned(), |at| at.to_rfc3339())
    );

    // No UserDirectory here, so every owner implicitly holds every permission and
    // `allows` says yes to anything. Powers that must be granted explicitly, like the
    // admin API's, ask `grants`: a directory's answer or the key's own scopes.
    assert!(!principal.grants("admin"));

    // A typo is refused by the checksum, before the store is asked.
    let mut typo = issued.key.expose().to_owned();
    let last = typo.pop().ok_or("keys are not empty")?;
    typo.push(if last == 'a' { 'b' } else { 'a' });
    let Err(refused) = gate.verify(&typo).await else {
        return Err("a mistyped key must be refused".into());
    };
    println!(
        "typo refused: {} (HTTP {})",
        refused.reason(),
        refused.http("abs").status
    );

    gate.revoke(issued.record.id).await?;
    let Err(refused) = gate.verify_header(&header).await else {
        return Err("a revoked key must be refused".into());
    };
    let http = refused.http("abs");
    println!(
        "after revoke: {} -> HTTP {} WWW-Authenticate: {}",
        refused.reason(),
        http.status,
        http.www_authenticate.unwrap_or_default()
    );
    assert_eq!(refused.reason(), "inactive");
    Ok(())
}
