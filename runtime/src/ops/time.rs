//! Times on the command line: RFC 3339 (`2026-11-22T10:00:00Z`, or with an
//! offset such as `+01:00`), a day or a month (`2026-11-22`, `2026-11`: its
//! start, UTC), relative to now (`-1h`, `-30m`, `now`), Unix milliseconds,
//! or a stream id (whose first part is Unix milliseconds).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `s` as Unix milliseconds, relative forms counted back from `now`; a day
/// or a month is its start.
pub fn parse(s: &str, now: u64) -> Result<u64, String> {
    parse_as(s, now, false)
}

/// `s` as the end of a range that includes its end: as [`parse`], except
/// that a day or a month is its last millisecond (`--to 2026-11-30` takes
/// in all of the 30th).
pub fn parse_end(s: &str, now: u64) -> Result<u64, String> {
    parse_as(s, now, true)
}

fn parse_as(s: &str, now: u64, end: bool) -> Result<u64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(ago) = s.strip_prefix('-') {
        let d = humantime::parse_duration(ago).map_err(|e| format!("{s:?}: {e} (try -90s, -15m, -1h, -2d)"))?;
        return Ok(now.saturating_sub(d.as_millis() as u64));
    }
    // A month reads like the stream id `2026-11` (2 s after 1970), whose
    // Unix ms (`2026`) says the same, since the range is in whole ms.
    if let Some((start, next)) = day_or_month(s) {
        let ms = |t: &str| rfc3339(t).map_err(|e| format!("{s:?}: {e} (a day is 2026-11-22, a month 2026-11)"));
        let start = ms(&start)?;
        return if end { Ok(rfc3339(&next).map_or(start, |n| n.saturating_sub(1))) } else { Ok(start) };
    }
    if let Some(ms) = s.split_once('-').map_or(Some(s), |(ms, seq)| seq.parse::<u64>().ok().map(|_| ms))
        && let Ok(ms) = ms.parse::<u64>()
    {
        return Ok(ms);
    }
    rfc3339(s).map_err(|e| format!("{s:?}: {e} (expected RFC 3339 like 2026-11-22T10:00:00Z, -1h, or Unix ms)"))
}

/// `s` if it is a stream id (`1700000000000-3`), at which a range can
/// start or end exactly; `None` for anything else, a day or a month too.
pub fn stream_id(s: &str) -> Option<&str> {
    let s = s.trim();
    let (ms, seq) = s.split_once('-')?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    (digits(ms) && digits(seq) && ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok() && day_or_month(s).is_none())
        .then_some(s)
}

/// The start of day `YYYY-MM-DD` or month `YYYY-MM`, UTC, and the start of
/// the day or month after it, as RFC 3339; `None` for any other form. (The
/// day after the 31st of a shorter month is refused with it, by the parse
/// of its start.)
fn day_or_month(s: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = s.split('-').collect();
    let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
    let (year, month) = match parts[..] {
        [y, m] | [y, m, _] if digits(y, 4) && digits(m, 2) => (y.parse::<u32>().ok()?, m.parse::<u32>().ok()?),
        _ => return None,
    };
    let next_month = if month >= 12 { format!("{:04}-01", year + 1) } else { format!("{year:04}-{:02}", month + 1) };
    match parts[..] {
        [_, _] => Some((format!("{s}-01T00:00:00Z"), format!("{next_month}-01T00:00:00Z"))),
        [_, _, d] if digits(d, 2) => {
            let start = format!("{s}T00:00:00Z");
            let day = d.parse::<u32>().ok()?;
            // The next day, or the next month's first when this day is the
            // month's last (a day past it does not parse).
            let next = format!("{year:04}-{month:02}-{:02}T00:00:00Z", day + 1);
            let next = if rfc3339(&next).is_ok() { next } else { format!("{next_month}-01T00:00:00Z") };
            Some((start, next))
        }
        _ => None,
    }
}

/// RFC 3339 `s` (`Z` or an offset) as Unix milliseconds; nothing else.
pub fn rfc3339(s: &str) -> Result<u64, humantime::TimestampError> {
    let (local, offset_ms) = utc_offset(s.trim());
    let t = humantime::parse_rfc3339_weak(local)?;
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Ok(ms.saturating_sub(offset_ms).max(0) as u64)
}

/// An RFC 3339 time split into its local part and its `+hh:mm`/`-hh:mm`
/// offset from UTC in ms (humantime reads only `Z`); `(s, 0)` without one.
fn utc_offset(s: &str) -> (&str, i64) {
    let Some(split) = s.len().checked_sub(6).filter(|&i| s.len() > 19 && s.is_char_boundary(i)) else {
        return (s, 0);
    };
    let (local, offset) = s.split_at(split);
    let b = offset.as_bytes();
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return (s, 0),
    };
    let digits = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0, |n, d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
    };
    match (digits(1..3), b[3], digits(4..6)) {
        // A `Z` before the offset would be read as UTC by humantime: refused.
        (Some(h), b':', Some(m)) if h < 24 && m < 60 && !local.ends_with(['Z', 'z']) => {
            (local, sign * (h * 60 + m) * 60_000)
        }
        _ => (s, 0),
    }
}

/// `ms` as RFC 3339, to the second, UTC.
pub fn format(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// How long ago `ms` was, short: `42s`, `5m`, `3h`, `2d`.
pub fn age(ms: u64, now: u64) -> String {
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The Unix milliseconds in stream id `id`.
pub fn of_id(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn every_form_parses() {
        assert_eq!(parse("now", NOW), Ok(NOW));
        assert_eq!(parse("-1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(parse("-90s", NOW), Ok(NOW - 90_000));
        assert_eq!(parse("1700000000000", NOW), Ok(1_700_000_000_000));
        assert_eq!(parse("1700000000000-3", NOW), Ok(1_700_000_000_000));
        assert_eq!(parse("2023-11-14T22:13:20Z", NOW), Ok(1_700_000_000_000));
        assert_eq!(parse("2023-11-14T22:13:20.5Z", NOW), Ok(1_700_000_000_500));
        assert_eq!(parse("2023-11-15T00:13:20+02:00", NOW), Ok(1_700_000_000_000));
        assert_eq!(parse("2023-11-14T17:13:20.5-05:00", NOW), Ok(1_700_000_000_500));
        assert_eq!(parse("2023-11-14T22:13:20+00:00", NOW), Ok(1_700_000_000_000));
        for malformed in ["+25:00", "+-1:00", "+01:-5", "+1:000", "Z+01:00"] {
            assert!(parse(&format!("2023-11-14T22:13:20{malformed}"), NOW).is_err(), "{malformed}");
        }
        assert_eq!(parse("2023-11-14", NOW), Ok(1_699_920_000_000));
        assert_eq!(parse("2023-11", NOW), Ok(1_698_796_800_000));
        assert!(parse("2023-13", NOW).unwrap_err().contains("a month 2026-11"));
        assert!(parse("2023-02-30", NOW).is_err());
        assert_eq!(parse("2000-5", NOW), Ok(2000), "a stream id, its ms");
        // As the end of a range, a day or a month is its last millisecond.
        assert_eq!(parse_end("2023-11-14", NOW), Ok(1_700_006_400_000 - 1));
        assert_eq!(parse_end("2023-11-30", NOW), parse("2023-12", NOW).map(|ms| ms - 1));
        assert_eq!(parse_end("2023-12-31", NOW), parse("2024-01-01", NOW).map(|ms| ms - 1));
        assert_eq!(parse_end("2023-12", NOW), parse("2024-01", NOW).map(|ms| ms - 1));
        assert_eq!(parse_end("2024-02-28", NOW), parse("2024-02-29", NOW).map(|ms| ms - 1), "a leap year");
        assert!(parse_end("2023-02-29", NOW).is_err());
        assert_eq!(parse_end("-1h", NOW), parse("-1h", NOW));
        assert_eq!(stream_id("1700000000000-3"), Some("1700000000000-3"));
        assert_eq!(stream_id("5-0"), Some("5-0"));
        for not_an_id in ["2023-11", "2023-11-14", "1700000000000", "-1h", "5-", "-5", "5-x", "99999999999999999999-0"]
        {
            assert_eq!(stream_id(not_an_id), None, "{not_an_id}");
        }
        assert!(parse("yesterday", NOW).unwrap_err().contains("RFC 3339"));
        assert!(parse("-1 fortnight", NOW).is_err());
    }

    #[test]
    fn ages_and_formats_read_well() {
        assert_eq!(age(NOW - 5_000, NOW), "5s");
        assert_eq!(age(NOW - 7_200_000, NOW), "2h");
        assert_eq!(format(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }
}
