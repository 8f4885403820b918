//! Secrets and passwords: enrolment secrets are random tokens stored only as
//! SHA-256 (they carry 160 bits of entropy, so a fast hash is safe); console
//! passwords are stored as Argon2id hashes; console second factors are
//! TOTP (RFC 6238) secrets.

use argon2::password_hash::{PasswordHasher, SaltString};

use crate::pki::sha256_hex;

const SECRET_PREFIX: &str = "hmes_";

/// A new enrolment secret, e.g. `hmes_3f9c…` (45 characters).
pub fn generate_enrollment_secret() -> String {
    format!("{SECRET_PREFIX}{}", random_hex(20))
}

/// A new API token (printed once; stored as its SHA-256).
pub fn generate_api_token() -> String {
    format!("hmapi_{}", random_hex(24))
}

/// What the database keeps of a secret.
pub fn secret_digest(secret: &str) -> String {
    sha256_hex(secret.trim().as_bytes())
}

/// The leading characters shown by `enroll-secret list`.
pub fn secret_hint(secret: &str) -> String {
    secret.chars().take(SECRET_PREFIX.len() + 6).collect()
}

/// A new console password: 20 characters without look-alikes.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    random_bytes(20)
        .into_iter()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::encode_b64(&random_bytes(16))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches an Argon2 hash (false for a malformed hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random token for a console session or CSRF check (256 bits, hex).
pub fn session_token() -> String {
    random_hex(32)
}

/// A new TOTP secret, base32 (160 bits, as RFC 4226 recommends).
pub fn generate_totp_secret() -> String {
    totp_rs::Secret::Raw(random_bytes(20))
        .to_encoded()
        .to_string()
}

/// Whether `code` is the 6-digit TOTP (SHA-1, 30 s steps, one step of
/// clock skew either way) of `secret` at Unix time `now`.
pub fn totp_matches(secret: &str, code: &str, now: u64) -> bool {
    let Ok(bytes) = totp_rs::Secret::Encoded(secret.to_owned()).to_bytes() else {
        return false;
    };
    let Ok(totp) = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes) else {
        return false;
    };
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    code.len() == 6 && totp.check(&code, now)
}

/// The time step whose code `code` is (within one step either way of
/// `now`), so the caller can refuse a step already used.
pub fn totp_step(secret: &str, code: &str, now: u64) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 {
        return None;
    }
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .ok()?;
    let totp = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes).ok()?;
    [now.saturating_sub(30), now, now + 30]
        .into_iter()
        .find(|t| totp.generate(*t) == code)
        .map(|t| t / 30)
}

/// The code a TOTP app shows at `now` (for tests and the set-up check).
pub fn totp_code(secret: &str, now: u64) -> Option<String> {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .ok()?;
    let totp = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes).ok()?;
    Some(totp.generate(now))
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the OS random source is available");
    bytes
}

fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_totp_codes_check() {
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct hors"));
        assert!(!verify_password("not a hash", "x"));
        let secret = generate_totp_secret();
        let now = 1_800_000_000;
        let code = totp_code(&secret, now).unwrap();
        assert!(totp_matches(&secret, &code, now));
        assert!(totp_matches(&secret, &code, now + 30), "one step of skew");
        assert!(!totp_matches(&secret, &code, now + 120));
        assert!(!totp_matches(&secret, "12345", now));
        assert!(!totp_matches("not base32!", &code, now));
        assert_eq!(totp_step(&secret, &code, now), Some(now / 30));
        assert_eq!(totp_step(&secret, &code, now + 30), Some(now / 30));
        assert_eq!(totp_step(&secret, &code, now + 90), None);
    }
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[test]
    fn secrets_are_unique_and_digest_ignores_surrounding_space() {
        let a = generate_enrollment_secret();
        let b = generate_enrollment_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), 45);
        assert_eq!(secret_digest(&a), secret_digest(&format!(" {a}\n")));
        assert!(a.starts_with(&secret_hint(&a)));
    }

    #[test]
    fn password_hash_verifies() {
        let password = generate_password();
        let hash = hash_password(&password).unwrap();
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        );
        assert!(
            argon2::Argon2::default()
                .verify_password(b"wrong", &parsed)
                .is_err()
        );
    }
}
