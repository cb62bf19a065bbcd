//! Secrets: generating device secrets and hashing / verifying credentials.
//!
//! Fed by the CLI (`gateway device add`, `gateway operator add`) and by identity on each CONNECT.
//! Device secrets are 256 random bits, so a salted SHA-256 is as strong as a slow hash and keeps
//! thousands of connects per second cheap; operator passwords are chosen by people and get
//! argon2id. Both comparisons are constant-time. Stored forms:
//! `sha256$<salt hex>$<digest hex>` and argon2's PHC string (`$argon2id$...`).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Hashing failed (argon2 refused its input).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// A fresh device secret: 32 random bytes as 64 hex characters.
pub fn generate_device_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// The stored form of a device secret.
pub fn hash_device_secret(secret: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    format!("sha256${}${}", hex(&salt), hex(&digest(&salt, secret)))
}

/// The stored form of an operator password.
pub fn hash_operator_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether checking a password against `stored` is slow (argon2: operators) rather than one
/// SHA-256 (device secrets). Unknown forms count as slow, so they never skip the login guard.
pub fn is_slow(stored: &str) -> bool {
    !stored.starts_with("sha256$")
}

/// Whether `presented` matches `stored` (either form). Unknown forms never match.
pub fn verify(stored: &str, presented: &str) -> bool {
    if let Some(rest) = stored.strip_prefix("sha256$") {
        let Some((salt, expected)) = rest.split_once('$') else {
            return false;
        };
        let (Some(salt), Some(expected)) = (unhex(salt), unhex(expected)) else {
            return false;
        };
        return digest(&salt, presented).ct_eq(&expected[..]).into();
    }
    match PasswordHash::new(stored) {
        Ok(hash) => Argon2::default()
            .verify_password(presented.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

fn digest(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(secret.as_bytes());
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() & 1 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_secrets_verify_and_are_salted() {
        let secret = generate_device_secret();
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, generate_device_secret());
        let stored = hash_device_secret(&secret);
        assert_ne!(stored, hash_device_secret(&secret), "salted");
        assert!(verify(&stored, &secret));
        assert!(!is_slow(&stored));
        assert!(!verify(&stored, "wrong"));
        assert!(!verify(&stored, &secret[..63]));
        assert!(!verify("sha256$zz$00", &secret));
        assert!(!verify("plain", "plain"));
    }

    #[test]
    fn operator_passwords_use_argon2() {
        let stored = hash_operator_password("correct horse").expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(is_slow(&stored));
        assert!(verify(&stored, "correct horse"));
        assert!(!verify(&stored, "battery staple"));
    }
}
