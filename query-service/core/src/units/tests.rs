use super::*;
use proptest::prelude::*;

#[test]
fn sizes_in_every_spelling() {
    for (text, bytes) in [
        ("512MiB", 512 << 20),
        ("512Mi", 512 << 20),
        ("2Gi", 2 << 30),
        ("2 GiB", 2 << 30),
        ("1.5GiB", 3 << 29),
        ("64kib", 64 << 10),
        ("1.5GB", 1_500_000_000),
        ("100", 100),
        ("1Ti", 1 << 40),
        ("10b", 10),
    ] {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
    for bad in [
        "",
        "GiB",
        "1TiBs",
        "-1GiB",
        "0",
        "12 parsecs",
        ".5G",
        "1.G",
        "1..5G",
    ] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
    assert!(
        parse_size("0.1")
            .unwrap_err()
            .to_string()
            .contains("at least one byte")
    );
    assert!(
        parse_size("3 parsecs")
            .unwrap_err()
            .to_string()
            .contains("parsecs")
    );
}

#[test]
fn sizes_format_as_operators_write_them() {
    assert_eq!(format_size(256 << 10), "256 KiB");
    assert_eq!(format_size(1 << 30), "1 GiB");
    assert_eq!(format_size(3 << 29), "1.5 GiB");
    assert_eq!(format_size(100), "100 B");
    assert_eq!(parse_size(&format_size(3 << 29)), Ok(3 << 29));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(
        parse_duration(" 250ms ").unwrap(),
        Duration::from_millis(250)
    );
    assert!(parse_duration("soon").is_err());
    let d = Duration::from_secs(75);
    assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
}

/// The chart's values schema carries this crate's patterns, so Helm refuses exactly what the
/// binaries refuse.
#[test]
fn the_chart_schema_uses_these_patterns() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../charts/quiver/values.schema.json"
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(schema["$defs"]["size"]["pattern"], SIZE_PATTERN);
    assert_eq!(schema["$defs"]["duration"]["pattern"], DURATION_PATTERN);
}

proptest! {
    /// What the schema pattern admits, the parser reads (unless under one byte), and the
    /// other way round: the two never disagree.
    #[test]
    fn pattern_and_parser_agree(text in r"[0-9]{0,4}(\.[0-9]{0,2})?\s?([kKmMgGtTbBxi]{0,3})") {
        let pattern = regex_lite(&text);
        match parse_size(&text) {
            Ok(_) => prop_assert!(pattern, "{text:?} parses but the pattern refuses it"),
            Err(SizeError::TooSmall(_)) => prop_assert!(pattern),
            Err(_) => prop_assert!(!pattern, "{text:?} matches but does not parse"),
        }
    }
}

/// [`SIZE_PATTERN`] by hand (this crate has no regex engine): digits, optional fraction, an
/// optional space, then an optional unit.
fn regex_lite(text: &str) -> bool {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return false;
    }
    let mut rest = &text[digits..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    if let Some(stripped) = rest.strip_prefix(|c: char| c.is_whitespace()) {
        rest = stripped;
    }
    let unit = rest.to_ascii_lowercase();
    let unit = unit.as_str();
    if unit.is_empty() || unit == "b" {
        return true;
    }
    let mut chars = unit.chars();
    let Some(prefix) = chars.next() else {
        return true;
    };
    if !"kmgt".contains(prefix) {
        return false;
    }
    let tail: String = chars.collect();
    matches!(tail.as_str(), "" | "i" | "b" | "ib")
}
