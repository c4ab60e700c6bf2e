//! Lifetimes on the command line: `30d`, `12h`, `90m`, `3600s`, `2w`, or `0` for none.

use anyhow::{Context as _, bail};

/// Parse a lifetime into seconds. A bare number is seconds; `0` (or `never`) means
/// no expiry. Units: `s`, `m`, `h`, `d`, `w`.
pub fn parse_duration_s(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("never") {
        return Ok(0);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        bail!(
            "invalid duration {text:?}: expected a number with a unit, such as 30d, 12h, 90m, 3600s or 0"
        );
    }
    let n: i64 = digits
        .parse()
        .with_context(|| format!("invalid duration {text:?}: number out of range"))?;
    let factor: i64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => bail!("invalid duration {text:?}: unknown unit {other:?} (use s, m, h, d or w)"),
    };
    n.checked_mul(factor)
        .with_context(|| format!("invalid duration {text:?}: too long"))
}

/// Adapter for clap's `value_parser`.
pub fn clap_duration(text: &str) -> Result<i64, String> {
    parse_duration_s(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_understood() {
        assert_eq!(parse_duration_s("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration_s("12h").unwrap(), 12 * 3600);
        assert_eq!(parse_duration_s("90m").unwrap(), 90 * 60);
        assert_eq!(parse_duration_s("3600s").unwrap(), 3600);
        assert_eq!(parse_duration_s("2w").unwrap(), 14 * 86_400);
        assert_eq!(parse_duration_s("45").unwrap(), 45);
    }

    #[test]
    fn zero_means_no_expiry() {
        assert_eq!(parse_duration_s("0").unwrap(), 0);
        assert_eq!(parse_duration_s("0d").unwrap(), 0);
        assert_eq!(parse_duration_s("never").unwrap(), 0);
    }

    #[test]
    fn bad_input_is_refused() {
        for bad in [
            "",
            "d",
            "abc",
            "10x",
            "-5d",
            "1.5h",
            "5 d",
            "12hh",
            "99999999999999999999s",
            "9999999999999999d",
        ] {
            assert!(parse_duration_s(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn errors_name_the_input() {
        let err = parse_duration_s("10x").unwrap_err().to_string();
        assert!(err.contains("10x") && err.contains("unit"), "{err}");
    }
}
