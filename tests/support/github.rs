//! A stand-in for GitHub's secret-scanning signer: a P-256 key pair made in the test, its
//! public key in the document GitHub publishes, and signed leak reports.
#![allow(dead_code)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

/// The DER of a P-256 `SubjectPublicKeyInfo` before its 65-byte point (RFC 5480), written
/// out here independently of keygate's parser.
const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// One GitHub signing key: its identifier and key pair.
pub struct Signer {
    pub identifier: String,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    /// A fresh P-256 key pair (`EcdsaKeyPair::generate_pkcs8`) under `identifier`.
    pub fn new(identifier: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self {
            identifier: identifier.to_owned(),
            pair,
            rng,
        }
    }

    /// The public key as GitHub publishes it: PEM of the SPKI DER, 64-column lines.
    pub fn public_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    /// This key's entry of GitHub's public keys document.
    pub fn entry(&self, is_current: bool) -> serde_json::Value {
        serde_json::json!({
            "key_identifier": self.identifier,
            "key": self.public_pem(),
            "is_current": is_current,
        })
    }

    /// The base64 ASN.1 DER signature of `body`, as `Github-Public-Key-Signature` carries it.
    pub fn sign(&self, body: &[u8]) -> String {
        STANDARD.encode(self.pair.sign(&self.rng, body).unwrap().as_ref())
    }
}

/// GitHub's public keys document listing `signers` (the first one current).
pub fn keys_document(signers: &[&Signer]) -> String {
    let keys: Vec<serde_json::Value> = signers
        .iter()
        .enumerate()
        .map(|(i, s)| s.entry(i == 0))
        .collect();
    serde_json::json!({ "public_keys": keys }).to_string()
}

/// A report body naming `tokens`, each as GitHub sends a match.
pub fn report(tokens: &[&str]) -> String {
    let matches: Vec<serde_json::Value> = tokens
        .iter()
        .map(|token| {
            serde_json::json!({
                "token": token,
                "type": "keygate_api_key",
                "url": "https://github.com/octocat/Hello-World/blob/12345600b9cbe38a219f39a9941c9319b600c002/foo/bar.txt",
                "source": "content",
            })
        })
        .collect();
    serde_json::Value::Array(matches).to_string()
}
