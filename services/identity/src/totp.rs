//! RFC 6238 TOTP (SHA-1, 6 digits, 30 s steps, one step of skew) and recovery codes.

use rand::RngCore as _;
use totp_rs::{Algorithm, Totp};

/// Length of a new TOTP seed in bytes (160 bits, as RFC 4226 recommends).
pub const SEED_LEN: usize = 20;

/// A fresh random seed.
pub fn new_seed() -> Vec<u8> {
    let mut seed = vec![0u8; SEED_LEN];
    rand::rng().fill_bytes(&mut seed);
    seed
}

fn totp(seed: &[u8], issuer: &str, account: &str) -> Option<Totp> {
    totp_rs::Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(seed.to_vec())
        .with_issuer(Some(issuer.replace(':', "")))
        .with_account_name(account.replace(':', ""))
        .build()
        .ok()
}

/// Base32 secret and `otpauth://` URI for an authenticator app.
pub fn provisioning(seed: &[u8], issuer: &str, account: &str) -> Option<(String, String)> {
    let t = totp(seed, issuer, account)?;
    let url = t.to_url().ok()?;
    Some((t.secret().to_base32(), url))
}

/// The time step the code matches (within one step of skew), if any.
pub fn check(seed: &[u8], code: &str, unix_s: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(seed, "Lattice", "user")?;
    t.check(code, unix_s)
}

/// The code for a time (tests and the CLI's own checks).
pub fn code_at(seed: &[u8], unix_s: u64) -> String {
    totp(seed, "Lattice", "user")
        .map(|t| t.generate(unix_s).to_string())
        .unwrap_or_default()
}

/// Ten single-use recovery codes, `xxxxx-xxxxx` in lowercase base32.
pub fn recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    (0..10)
        .map(|_| {
            let mut bytes = [0u8; 10];
            rand::rng().fill_bytes(&mut bytes);
            let chars: String = bytes
                .iter()
                .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
                .collect();
            format!("{}-{}", &chars[..5], &chars[5..])
        })
        .collect()
}

/// Normalise a recovery code as typed (case, spaces).
pub fn normalise_recovery_code(code: &str) -> String {
    code.trim().to_lowercase().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_check_within_skew_only() {
        let seed = new_seed();
        let t = 1_700_000_000;
        let code = code_at(&seed, t);
        assert_eq!(check(&seed, &code, t), Some(t / 30));
        assert!(check(&seed, &code, t + 30).is_some());
        assert!(check(&seed, &code, t + 300).is_none());
        assert!(check(&seed, "12345", t).is_none());
        assert!(check(&seed, "abcdef", t).is_none());
    }

    #[test]
    fn provisioning_uri_names_issuer_and_account() {
        let (secret, uri) = provisioning(&new_seed(), "Lattice", "admin").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(uri.contains("issuer=Lattice"), "{uri}");
        assert!(uri.contains(&secret), "{uri}");
    }

    #[test]
    fn recovery_codes_are_distinct() {
        let codes = recovery_codes();
        assert_eq!(codes.len(), 10);
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
        assert_eq!(normalise_recovery_code(" ABCDE-FGHIJ "), "abcde-fghij");
    }
}
