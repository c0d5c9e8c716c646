//! Whether a gate's pepper is the one its store's keys were made with:
//! [`Keygate::check_pepper`], run once per gate and remembered.

use crate::error::Error;
use crate::gate::Keygate;
use crate::store::StoreError;

/// The outcome of a gate's pepper check: the versions of its keyring whose fingerprint
/// differs from the one the store recorded (empty when every version matches).
#[derive(Debug, Default)]
pub(crate) struct PepperVerdict {
    mismatched: Vec<u32>,
}

impl Keygate {
    /// Checks that this gate's pepper is the one the store's keys were made with, and
    /// tells the store about any pepper version it has not seen yet.
    ///
    /// The store remembers a keyed fingerprint of each pepper version
    /// ([`PepperFingerprint`](crate::PepperFingerprint), through
    /// [`KeyStore::remember_pepper`](crate::KeyStore::remember_pepper)). For each version
    /// of the gate's keyring, current and previous, the first gate to ask records its
    /// fingerprint; every later gate must bring the same pepper under that version. So a
    /// server started with the wrong pepper (a typo, another environment's secret, a lost
    /// pepper file replaced by a new one) fails here instead of minting keys that never
    /// verify and refusing every existing key as `hash_mismatch`.
    ///
    /// Call it when a server starts, before it takes requests, and stop if it fails.
    /// [`mint`](Self::mint) and [`rotate`](Self::rotate) run it before they write, and
    /// [`verify`](Self::verify) consults it when a key's hash does not match: then a key
    /// whose pepper version does not match is refused with
    /// [`VerifyError::PepperMismatch`](crate::VerifyError::PepperMismatch) (HTTP 500), not
    /// as a bad key. The check runs once per gate: its outcome is kept, a store failure is
    /// not (the next call asks again). Verifying a key whose hash matches never runs it.
    ///
    /// A store that already held keys when it met a keygate that records fingerprints
    /// (made with an earlier version) has no fingerprint yet: the first gate to check
    /// records its own, trusting it, and logs that at info level (`recorded the
    /// fingerprint of pepper version …`). Start the upgraded servers with the pepper the
    /// keys were made with. Should a wrong one have been recorded, delete that version's
    /// fingerprint (the `keygate_peppers` row, or the field of the Redis hash
    /// `<namespace>peppers`) and start again with the right pepper.
    ///
    /// A new pepper for a store that has keys needs a new version number, with the old
    /// pepper kept as a previous version (see [`Pepper::with_previous`](crate::Pepper::with_previous)).
    ///
    /// # Errors
    ///
    /// [`Error::PepperMismatch`] naming the first version (current one first) whose
    /// pepper differs from the store's, and [`Error::Store`] if the store cannot be asked
    /// (also after the gate's [`store_timeout`](crate::KeygateBuilder::store_timeout)).
    ///
    /// ```
    /// use keygate::{Error, Keygate, MemoryStore, NewKey, Pepper};
    /// use std::sync::Arc;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = Arc::new(MemoryStore::new());
    /// let gate = Keygate::builder(store.clone(), Pepper::new(1, [1u8; 32])?).build()?;
    /// gate.check_pepper().await?; // the first check records pepper 1's fingerprint
    ///
    /// // Another process, configured with another pepper under the same version:
    /// let wrong = Keygate::builder(store.clone(), Pepper::new(1, [2u8; 32])?).build()?;
    /// assert!(matches!(
    ///     wrong.check_pepper().await,
    ///     Err(Error::PepperMismatch { version: 1 })
    /// ));
    /// assert!(wrong.mint(NewKey::new("k", "alice")).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn check_pepper(&self) -> Result<(), Error> {
        match self.pepper_verdict().await?.mismatched.first() {
            None => Ok(()),
            Some(&version) => Err(Error::PepperMismatch { version }),
        }
    }

    /// [`pepper_mismatched`](Self::pepper_mismatched) once the check has run (`None`
    /// before), without waiting.
    pub(crate) fn known_pepper_mismatch(&self, version: u32) -> Option<bool> {
        self.inner
            .pepper_check
            .get()
            .map(|verdict| verdict.mismatched.contains(&version))
    }

    /// Whether the store recorded another fingerprint for pepper `version` than this
    /// gate's: why a hash did not match. Runs the check if it has not run yet; `false`
    /// if the store cannot be asked.
    pub(crate) async fn pepper_mismatched(&self, version: u32) -> bool {
        self.pepper_verdict()
            .await
            .is_ok_and(|verdict| verdict.mismatched.contains(&version))
    }

    /// The gate's verdict: computed by the first caller, then kept.
    async fn pepper_verdict(&self) -> Result<&PepperVerdict, StoreError> {
        self.inner
            .pepper_check
            .get_or_try_init(|| self.judge_pepper())
            .await
    }

    async fn judge_pepper(&self) -> Result<PepperVerdict, StoreError> {
        let inner = &*self.inner;
        let mut verdict = PepperVerdict::default();
        for &(version, fingerprint) in inner.pepper.fingerprints() {
            let ask = inner.store.remember_pepper(version, fingerprint);
            let known = match inner.store_timeout {
                None => ask.await,
                Some(limit) => tokio::time::timeout(limit, ask)
                    .await
                    .unwrap_or(Err(StoreError::Timeout)),
            }?;
            match known {
                None => tracing::info!(
                    target: "keygate",
                    pepper_version = version,
                    "recorded the fingerprint of pepper version {version} in the key store \
                     (its first use there)"
                ),
                Some(known) if known == fingerprint => {}
                Some(_) => {
                    tracing::error!(
                        target: "keygate",
                        pepper_version = version,
                        "wrong pepper: pepper version {version} does not match the fingerprint \
                         the key store recorded for it"
                    );
                    verdict.mismatched.push(version);
                }
            }
        }
        Ok(verdict)
    }
}
