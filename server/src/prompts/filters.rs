//! Jinja filters and functions for Hong Kong government text, registered on the prompt
//! library's environment:
//!
//! - `{{ "2025-03-27" | zh_date }}` -> `二○二五年三月二十七日` (year digits one by one, zero as
//!   `○` U+25CB as in government text; month and day as numerals).
//! - `{{ "2025-03-27" | en_date }}` -> `27 March 2025` (no leading zero, no comma).
//! - `{{ 3 | zh_numeral }}` -> `三` (1..=99, for `(一)`, `(二)`… numbering).
//! - `{{ today() }}` -> today's date in Hong Kong (UTC+8) as `YYYY-MM-DD`.
//!
//! Dates are ISO `YYYY-MM-DD` strings (what `date` variables hold); anything else is a render
//! error naming the value.

use std::time::{SystemTime, UNIX_EPOCH};

use govlm_inference::chat_template::MONTH_NAMES;
use minijinja::{Environment, Error, ErrorKind};

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    pub year: i32,
    /// 1..=12
    pub month: u32,
    /// 1..=31, valid for the month.
    pub day: u32,
}

const ZH_DIGITS: [char; 10] = ['○', '一', '二', '三', '四', '五', '六', '七', '八', '九'];

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Parses an ISO date `YYYY-MM-DD` (4-digit year 1000..=9999); `None` if malformed or not a
/// real date (e.g. 2025-02-30).
pub fn parse_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let year = num(0..4)? as i32;
    let month = num(5..7)?;
    let day = num(8..10)?;
    if year < 1000 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(Date { year, month, day })
}

/// `1..=99` in Chinese numerals (`十一`, `二十`, `九十九`); other numbers as Arabic digits.
pub fn zh_numeral(n: i64) -> String {
    let d = |k: i64| ZH_DIGITS[k as usize];
    match n {
        1..=9 => d(n).to_string(),
        10 => "十".to_string(),
        11..=19 => format!("十{}", d(n - 10)),
        20..=99 if n % 10 == 0 => format!("{}十", d(n / 10)),
        20..=99 => format!("{}十{}", d(n / 10), d(n % 10)),
        _ => n.to_string(),
    }
}

/// `二○二五年三月二十七日`.
pub fn format_zh_date(d: Date) -> String {
    let year: String = d
        .year
        .to_string()
        .chars()
        .map(|c| ZH_DIGITS[c.to_digit(10).unwrap_or(0) as usize])
        .collect();
    format!(
        "{year}年{}月{}日",
        zh_numeral(d.month as i64),
        zh_numeral(d.day as i64)
    )
}

/// `27 March 2025`.
pub fn format_en_date(d: Date) -> String {
    let month = MONTH_NAMES
        .get(d.month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("");
    format!("{} {month} {}", d.day, d.year)
}

/// The civil date of `unix_days` days after 1970-01-01 (Howard Hinnant's algorithm).
pub fn date_from_unix_days(unix_days: i64) -> Date {
    let z = unix_days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    Date { year, month, day }
}

/// Today in Hong Kong (UTC+8), `YYYY-MM-DD`.
pub fn today_hk() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let d = date_from_unix_days((secs + 8 * 3600).div_euclid(86_400));
    format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
}

fn date_arg(value: &str, filter: &str) -> Result<Date, Error> {
    parse_date(value).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("`{filter}` needs a date as YYYY-MM-DD; got `{value}`"),
        )
    })
}

/// Registers the filters and functions of this module on `env`.
pub fn register(env: &mut Environment<'static>) {
    env.add_filter("zh_date", |v: String| -> Result<String, Error> {
        Ok(format_zh_date(date_arg(&v, "zh_date")?))
    });
    env.add_filter("en_date", |v: String| -> Result<String, Error> {
        Ok(format_en_date(date_arg(&v, "en_date")?))
    });
    env.add_filter("zh_numeral", |n: i64| -> String { zh_numeral(n) });
    env.add_function("today", today_hk);
}

/// Names that templates may use without declaring them as variables: the functions added here
/// and minijinja's global functions.
pub const GLOBALS: &[&str] = &["today", "range", "dict", "namespace", "debug", "loop"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_both_languages() {
        let d = parse_date("2025-03-27").unwrap();
        assert_eq!(format_zh_date(d), "二○二五年三月二十七日");
        assert_eq!(format_en_date(d), "27 March 2025");
        let d = parse_date("2024-07-01").unwrap();
        assert_eq!(format_zh_date(d), "二○二四年七月一日");
        assert_eq!(format_en_date(d), "1 July 2024");
        let d = parse_date("2030-12-10").unwrap();
        assert_eq!(format_zh_date(d), "二○三○年十二月十日");
        let d = parse_date("2024-02-29").unwrap();
        assert_eq!(format_zh_date(d), "二○二四年二月二十九日");
        assert_eq!(
            format_en_date(parse_date("1997-11-30").unwrap()),
            "30 November 1997"
        );
    }

    #[test]
    fn bad_dates_are_rejected() {
        for s in [
            "2025-02-29",
            "2025-13-01",
            "2025-00-10",
            "2025-1-1",
            "27/03/2025",
            "",
            "２０２５-03-27",
            "2025-03-3x",
        ] {
            assert_eq!(parse_date(s), None, "{s}");
        }
    }

    #[test]
    fn numerals() {
        let got: Vec<String> = [1, 2, 10, 11, 19, 20, 21, 35, 99, 100]
            .iter()
            .map(|&n| zh_numeral(n))
            .collect();
        assert_eq!(
            got,
            [
                "一",
                "二",
                "十",
                "十一",
                "十九",
                "二十",
                "二十一",
                "三十五",
                "九十九",
                "100"
            ]
        );
    }

    #[test]
    fn unix_days() {
        assert_eq!(
            date_from_unix_days(0),
            Date {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        // 2025-03-27 is day 20174.
        assert_eq!(
            date_from_unix_days(20_174),
            parse_date("2025-03-27").unwrap()
        );
        assert!(parse_date(&today_hk()).is_some());
    }

    #[test]
    fn filters_render() {
        let mut env = Environment::new();
        register(&mut env);
        let out = env
            .render_str(
                "{{ d | zh_date }} / {{ d | en_date }} / ({{ 2 | zh_numeral }})",
                minijinja::context! { d => "2025-03-27" },
            )
            .unwrap();
        assert_eq!(out, "二○二五年三月二十七日 / 27 March 2025 / (二)");
        let err = env
            .render_str("{{ 'soon' | zh_date }}", minijinja::context! {})
            .unwrap_err();
        assert!(err.to_string().contains("YYYY-MM-DD"), "{err}");
    }
}
