//! Sizes in the config file ("256MiB", "1.5GB", "65536"), and the audit
//! disk's free-space threshold, which is a size or a share of the
//! filesystem ("5%").
//!
//! Units are explicit about their base: `KiB`, `MiB`, `GiB`, `TiB` are
//! powers of 1024, `kB`, `MB`, `GB`, `TB` powers of 1000, and a number
//! alone (or with `B`) is bytes. Unit names are matched without regard to
//! case; a bare `K`, `M` or `G` is refused as ambiguous.

use std::fmt;

/// Bytes per unit, by lowercase unit name.
const UNITS: [(&str, u64); 10] = [
    ("", 1),
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

/// Parses a size in bytes: a number (decimals allowed with a unit), an
/// optional space, a unit. The error says what is wrong, without the
/// input (the caller quotes it).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim_start());
    if number.is_empty() {
        return Err("it does not start with a number".into());
    }
    let unit_lower = unit.to_ascii_lowercase();
    let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit_lower) else {
        return Err(format!(
            "unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB or kB, MB, GB, TB)"
        ));
    };
    let too_large = || "it is too large".to_owned();
    if !number.contains('.') {
        let n: u64 = number.parse().map_err(|_| too_large())?;
        return n.checked_mul(scale).ok_or_else(too_large);
    }
    if scale == 1 {
        return Err("a number of bytes must be whole".into());
    }
    let n: f64 = number.parse().map_err(|_| format!("{number:?} is not a number"))?;
    let bytes = (n * scale as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(too_large());
    }
    Ok(bytes as u64)
}

/// `[audit] min_free`: below this much free space on the audit log's
/// filesystem the agent raises an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFree {
    /// A number of bytes (0: never alert).
    Bytes(u64),
    /// A share of the filesystem's size, in hundredths of a percent (500:
    /// 5%).
    Percent(u32),
}

impl MinFree {
    /// The threshold in bytes on a filesystem of `size` bytes.
    pub fn bytes_of(self, size: u64) -> u64 {
        match self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => ((u128::from(size) * u128::from(p)) / 10_000) as u64,
        }
    }

    /// Whether the threshold is off ("0").
    pub fn is_off(self) -> bool {
        matches!(self, MinFree::Bytes(0) | MinFree::Percent(0))
    }
}

impl std::str::FromStr for MinFree {
    type Err = String;

    /// "256MiB", "0" or "5%" (up to two decimals, below 100%).
    fn from_str(text: &str) -> Result<MinFree, String> {
        let text = text.trim();
        let Some(percent) = text.strip_suffix('%') else {
            return parse_size(text).map(MinFree::Bytes);
        };
        let percent = percent.trim_end();
        let (whole, frac) = percent.split_once('.').unwrap_or((percent, ""));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !(frac.is_empty() || (frac.len() <= 2 && digits(frac))) {
            return Err("a percentage is a number with at most two decimals, e.g. \"5%\" or \"0.5%\"".into());
        }
        let whole: u32 = whole.parse().map_err(|_| "the percentage is too large".to_owned())?;
        let frac: u32 = format!("{frac:0<2}").parse().expect("two digits");
        match whole.checked_mul(100).and_then(|w| w.checked_add(frac)) {
            Some(p) if p < 10_000 => Ok(MinFree::Percent(p)),
            _ => Err("a percentage must be below 100%".into()),
        }
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MinFree::Bytes(b) => f.write_str(&human_bytes(b)),
            MinFree::Percent(p) if p % 100 == 0 => write!(f, "{}%", p / 100),
            MinFree::Percent(p) => write!(f, "{}.{:02}%", p / 100, p % 100),
        }
    }
}

/// A byte count for people: "256 MiB", "1.5 GiB", "512 B".
pub fn human_bytes(b: u64) -> String {
    const NAMES: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < NAMES.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", NAMES[unit])
    } else {
        format!("{value:.1} {}", NAMES[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_explicit_units() {
        let table: [(&str, u64); 12] = [
            ("0", 0),
            ("65536", 65_536),
            ("512B", 512),
            ("256MiB", 256 << 20),
            ("256 MiB", 256 << 20),
            ("256mib", 256 << 20),
            ("1GiB", 1 << 30),
            ("1.5GiB", 3 << 29),
            ("2TiB", 2 << 40),
            ("10kB", 10_000),
            ("300MB", 300_000_000),
            (" 4 GB ", 4_000_000_000),
        ];
        for (text, want) in table {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        let table = [
            ("", "does not start with a number"),
            ("MiB", "does not start with a number"),
            ("-1MiB", "does not start with a number"),
            ("256M", "unknown unit \"M\""),
            ("256 megs", "unknown unit \"megs\""),
            ("1.2.3MiB", "is not a number"),
            ("1.5", "must be whole"),
            ("99999999999TiB", "too large"),
            ("18446744073709551616", "too large"),
        ];
        for (text, want) in table {
            let err = parse_size(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn min_free_is_a_size_or_a_percentage() {
        let table = [
            ("256MiB", Ok(MinFree::Bytes(256 << 20))),
            ("0", Ok(MinFree::Bytes(0))),
            ("5%", Ok(MinFree::Percent(500))),
            ("0.5%", Ok(MinFree::Percent(50))),
            ("12.25 %", Ok(MinFree::Percent(1225))),
            ("99.99%", Ok(MinFree::Percent(9999))),
            ("100%", Err("below 100%")),
            ("5.125%", Err("at most two decimals")),
            ("%", Err("at most two decimals")),
            ("-5%", Err("at most two decimals")),
            ("5 percent", Err("unknown unit")),
        ];
        for (text, want) in table {
            match (text.parse::<MinFree>(), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn thresholds_in_bytes_and_as_shown() {
        assert_eq!(MinFree::Percent(500).bytes_of(1 << 30), 53_687_091);
        assert_eq!(MinFree::Percent(9999).bytes_of(10_000), 9_999);
        assert!(MinFree::Percent(9999).bytes_of(u64::MAX) < u64::MAX);
        assert_eq!(MinFree::Bytes(7).bytes_of(1), 7);
        assert!(MinFree::Bytes(0).is_off() && !MinFree::Percent(1).is_off());
        assert_eq!(MinFree::Bytes(256 << 20).to_string(), "256 MiB");
        assert_eq!(MinFree::Bytes(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(MinFree::Bytes(1000).to_string(), "1000 B");
        assert_eq!(MinFree::Percent(500).to_string(), "5%");
        assert_eq!(MinFree::Percent(50).to_string(), "0.50%");
    }
}
