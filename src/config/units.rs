//! Parsers for the value syntaxes of the file: durations, sizes, names, CIDRs.

use std::time::Duration;

/// `"250ms"`, `"2s"`, `"1m"`, `"1h 30m"`; a bare `"0"` is zero; at most a week.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        format!("is not a duration ({e}); write it like \"250ms\", \"2s\" or \"1m\", got {s:?}")
    })?;
    if d > super::defaults::MAX_DURATION {
        return Err(format!("must be at most 7 days, got {s:?}"));
    }
    Ok(d)
}

/// A size in bytes: an integer, or a string with an optional unit
/// (`B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "is not a size; write it like \"64KiB\", \"256MiB\" or a number of bytes, got {s:?}"
        )
    };
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("is too large, got {s:?}"))
}

/// Listener names: `[a-z0-9_-]+`.
pub(super) fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A CIDR (`10.0.0.0/8`), or a single address taken as a host network.
pub(super) fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let t = s.trim();
    if let Ok(net) = t.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = t.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    Err(format!(
        "is not a network in CIDR form like \"10.0.0.0/8\", got {s:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_documented_forms() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("400000000000y").is_err());
        assert!(parse_duration("8days").is_err());
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("10 KiB"), Ok(10240));
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-5").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn names_are_lowercase_digits_dash_underscore() {
        assert!(is_valid_name("web-1_a"));
        assert!(!is_valid_name("Web"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
    }

    #[test]
    fn cidrs_are_normalised_and_single_addresses_accepted() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("ten").is_err());
    }
}
